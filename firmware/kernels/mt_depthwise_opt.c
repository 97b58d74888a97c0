/* The optimised depthwise kernel (mt_depthwise_opt.h) instantiated once with
 * run-time parameters, for layers that do not get a specialised copy. */
#include "mt_depthwise_opt.h"

void mt_depthwise_s8_opt_shared(const mt_depthwise_opt_params *p, const int8_t *input, int8_t *output,
                                int8_t *scratch)
{
    mt_depthwise_s8_opt(p, p, input, output, scratch);
}
