/* Host-native harness: runs a generated model in a shared library, so tests can
 * compare the C kernels with TFLM bit for bit without an emulator. */
#include <stdint.h>
#include "model.h"

static uint8_t arena[MT_ARENA_SIZE] __attribute__((aligned(16)));

uint8_t *mt_native_arena(void)
{
    return arena;
}

void mt_native_run(void)
{
    for (uint32_t layer = 0; layer < mt_model_def.num_layers; layer++) {
        mt_model_def.run_layer(layer, arena);
    }
}
