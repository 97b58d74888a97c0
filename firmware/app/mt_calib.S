/* Known-length code for counter calibration (CALIBRATE command).
 *   mt_calib_loop(n, arena): 2*n + 1 instructions (n >= 1), including its bx lr
 *   mt_noop_layer(l, arena): 1 instruction
 * So measure(mt_calib_loop) - measure(mt_noop_layer) must be exactly 2*n. */
    .syntax unified
    .cpu cortex-m4
    .thumb

    .section .text.mt_calib_loop, "ax", %progbits
    .global mt_calib_loop
    .type mt_calib_loop, %function
    .thumb_func
mt_calib_loop:
1:  subs  r0, r0, #1
    bne   1b
    bx    lr
    .size mt_calib_loop, . - mt_calib_loop

    .section .text.mt_noop_layer, "ax", %progbits
    .global mt_noop_layer
    .type mt_noop_layer, %function
    .thumb_func
mt_noop_layer:
    bx    lr
    .size mt_noop_layer, . - mt_noop_layer
