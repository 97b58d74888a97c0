/* Host-native case runner of the differential fuzzer (host/microtile/check/fuzz_ops.py):
 * many generated models linked into one executable (native.build_case_runner), run
 * under ASan + UBSan in a subprocess.
 *
 * usage: mt_fuzz INPUTS OUTPUTS FIRST
 * For each case from FIRST on: read its device inputs (their bytes, in order) from
 * INPUTS, run it in an arena of exactly arena_size bytes from malloc (ASan catches
 * any access past it), append its outputs to OUTPUTS and print "done <case>".
 * A crash or sanitizer report leaves the failing case as the first one not done. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mt_model.h"

extern const mt_model *const mt_fuzz_cases[];
extern const uint32_t mt_fuzz_num_cases;

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s INPUTS OUTPUTS FIRST\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    FILE *out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) {
        perror("mt_fuzz");
        return 2;
    }
    for (uint32_t i = (uint32_t)strtoul(argv[3], NULL, 10); i < mt_fuzz_num_cases; i++) {
        const mt_model *m = mt_fuzz_cases[i];
        uint8_t *arena = malloc(m->arena_size ? m->arena_size : 1);
        if (arena == NULL) {
            return 2;
        }
        /* Old arena contents must not matter: fill with a pattern, not zeros. */
        memset(arena, 0x5a, m->arena_size);
        for (uint32_t j = 0; j < m->num_inputs; j++) {
            if (fread(arena + m->inputs[j].offset, 1, m->inputs[j].size, in) != m->inputs[j].size) {
                fprintf(stderr, "mt_fuzz: short input for case %u\n", (unsigned)i);
                return 2;
            }
        }
        for (uint32_t layer = 0; layer < m->num_layers; layer++) {
            m->run_layer(layer, arena);
        }
        for (uint32_t j = 0; j < m->num_outputs; j++) {
            fwrite(arena + m->outputs[j].offset, 1, m->outputs[j].size, out);
        }
        free(arena);
        fflush(out);
        printf("done %u\n", (unsigned)i);
        fflush(stdout);
    }
    fclose(out);
    fclose(in);
    return 0;
}
