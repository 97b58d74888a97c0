/* The interface between generated model code (model.c, written by
 * host/microtile/codegen/model_source.py) and the device app. The app owns the activation
 * arena (MT_ARENA_SIZE bytes from the generated model.h) and runs the model one
 * layer at a time, so it can read the counter around each layer. */
#ifndef MT_MODEL_H
#define MT_MODEL_H

#include <stdint.h>

typedef struct {
    uint32_t offset; /* byte offset of the tensor in the arena */
    uint32_t size;   /* bytes */
} mt_buffer;

typedef struct {
    const char *name;        /* model name */
    uint32_t hash;           /* first 32 bits of the compiled model's content hash */
    uint32_t arena_size;     /* bytes the arena must have */
    uint16_t num_inputs;
    uint16_t num_outputs;
    uint16_t num_layers;
    const mt_buffer *inputs;
    const mt_buffer *outputs;
    void (*run_layer)(uint32_t layer, uint8_t *arena);
} mt_model;

extern const mt_model mt_model_def;

#endif /* MT_MODEL_H */
