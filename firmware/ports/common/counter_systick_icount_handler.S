/* SysTick wrap handler for the instruction counter (see port.c). Written in assembly
 * so its instruction count is fixed: MT_SYSTICK_IRQ_INSNS instructions, which the
 * increment it adds already subtracts (mt_systick.inc = wrap - insns * per_insn). */
    .syntax unified
    .cpu cortex-m4
    .thumb

    .section .text.SysTick_Handler, "ax", %progbits
    .global SysTick_Handler
    .type SysTick_Handler, %function
    .thumb_func
SysTick_Handler:
    ldr   r0, =mt_systick          /* 1 */
    ldrd  r1, r2, [r0]             /* 2: base */
    ldrd  r3, r12, [r0, #8]        /* 3: inc */
    adds  r1, r1, r3               /* 4 */
    adc   r2, r2, r12              /* 5 */
    strd  r1, r2, [r0]             /* 6 */
    bx    lr                       /* 7 */
    .ltorg
    .size SysTick_Handler, . - SysTick_Handler
