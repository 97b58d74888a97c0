/* The optimised ADD kernel (mt_add_opt.h) instantiated once with run-time parameters,
 * for layers that do not get a specialised copy. */
#include "mt_add_opt.h"

void mt_add_s8_opt_shared(const mt_add_opt_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    mt_add_s8_opt(p, in1, in2, out);
}
