/* STM32F4 startup: vector table, .data/.bss initialisation, FPU enable, faults. */
#include <stdint.h>

#include "mt_port.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;

int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void);
void SysTick_Handler(void); /* mt_systick.S */
void USART2_IRQHandler(void); /* port.c */

#define MT_SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

void Reset_Handler(void)
{
    /* FPU first: the compiler may use VFP registers anywhere after this. */
    MT_SCB_CPACR |= (0xFu << 20);
    __asm volatile("dsb\n\tisb" ::: "memory");

    const uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    (void)main();
    mt_port_reset();
}

/* Faults: switch to a fresh stack (the fault may be a stack overflow) and let the app
 * report the faulting PC over the link. */
__attribute__((naked)) void HardFault_Handler(void)
{
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "ldr r1, =_sstack\n\t"
        "ldr r2, =_estack\n\t"
        "cmp r0, r1\n\t"
        "blo 1f\n\t"            /* stacked frame outside the stack: PC unknown */
        "cmp r0, r2\n\t"
        "bhs 1f\n\t"
        "ldr r0, [r0, #24]\n\t"
        "b 2f\n"
        "1:\n\t"
        "movs r0, #0\n"
        "2:\n\t"
        "msr msp, r2\n\t"
        "ldr r1, =mt_fault_text_hard\n\t"
        "b mt_app_fault\n\t"
        ".ltorg\n");
}

const char mt_fault_text_hard[] = "hard fault";

void Default_Handler(void)
{
    mt_app_fault(0, "unexpected interrupt");
}

#define MT_NUM_IRQS 82 /* STM32F405/407 */

typedef void (*mt_vector)(void);

#define MT_X10(h) h, h, h, h, h, h, h, h, h, h

__attribute__((section(".isr_vector"), used)) const mt_vector mt_vectors[16 + MT_NUM_IRQS] = {
    (mt_vector)(uintptr_t)&_estack,
    Reset_Handler,
    Default_Handler,   /* NMI */
    HardFault_Handler,
    HardFault_Handler, /* MemManage */
    HardFault_Handler, /* BusFault */
    HardFault_Handler, /* UsageFault */
    0, 0, 0, 0,
    Default_Handler,   /* SVCall */
    Default_Handler,   /* DebugMon */
    0,
    Default_Handler,   /* PendSV */
    SysTick_Handler,
    /* external interrupts 0..81; only USART2 (38) is used */
    MT_X10(Default_Handler), MT_X10(Default_Handler), MT_X10(Default_Handler), /* 0..29 */
    Default_Handler, Default_Handler, Default_Handler, Default_Handler,        /* 30..33 */
    Default_Handler, Default_Handler, Default_Handler, Default_Handler,        /* 34..37 */
    USART2_IRQHandler,                                                         /* 38 */
    Default_Handler,                                                           /* 39 */
    MT_X10(Default_Handler), MT_X10(Default_Handler), MT_X10(Default_Handler), /* 40..69 */
    MT_X10(Default_Handler), Default_Handler, Default_Handler,                 /* 70..81 */
};
