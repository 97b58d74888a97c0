/* The optimised SOFTMAX kernel (mt_softmax_opt.h) instantiated once with run-time
 * parameters, for layers that do not get a specialised copy. */
#include "mt_softmax_opt.h"

void mt_softmax_s8_opt_shared(const mt_softmax_opt_params *p, const int8_t *input, int8_t *output)
{
    mt_softmax_s8_opt(p, input, output);
}
