/* The optimised pooling kernels (mt_pool_opt.h) instantiated once with run-time
 * parameters, for layers that do not get a specialised copy. */
#include "mt_pool_opt.h"

void mt_avg_pool_s8_opt_shared(const mt_pool_params *p, const int8_t *input, int8_t *output)
{
    mt_avg_pool_s8_opt(p, input, output);
}

void mt_max_pool_s8_opt_shared(const mt_pool_params *p, const int8_t *input, int8_t *output)
{
    mt_max_pool_s8_opt(p, input, output);
}
