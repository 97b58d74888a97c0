/* Cortex-M startup shared by every bare-metal port: vector table (sized by the
 * family's MT_NUM_IRQS, the link UART's handler at MT_UART_IRQN), .data/.bss
 * initialisation, FPU enable, faults. */
#include <stdint.h>

#include "mt_port_common.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;

int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void);
void SysTick_Handler(void);     /* the counter part: counter_systick_icount_handler.S or counter_dwt.c */
void mt_uart_irq_handler(void); /* port_common.c */

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

typedef void (*mt_vector)(void);

/* External interrupt n: the link UART's handler or the default one. */
#define MT_IRQ(n) ((n) == MT_UART_IRQN ? mt_uart_irq_handler : Default_Handler)
#define MT_IRQ10(b) MT_IRQ((b) + 0), MT_IRQ((b) + 1), MT_IRQ((b) + 2), MT_IRQ((b) + 3), MT_IRQ((b) + 4), \
                    MT_IRQ((b) + 5), MT_IRQ((b) + 6), MT_IRQ((b) + 7), MT_IRQ((b) + 8), MT_IRQ((b) + 9)
/* the table holds MT_NUM_IRQS rounded up to tens (unused slots: Default_Handler) */
#define MT_IRQ_SLOTS (((MT_NUM_IRQS) + 9) / 10 * 10)
#if MT_IRQ_SLOTS > 160 || MT_UART_IRQN >= MT_NUM_IRQS
#error "MT_NUM_IRQS / MT_UART_IRQN out of range for this vector table"
#endif

__attribute__((section(".isr_vector"), used)) const mt_vector mt_vectors[16 + MT_IRQ_SLOTS] = {
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
    MT_IRQ10(0), MT_IRQ10(10), MT_IRQ10(20), MT_IRQ10(30), MT_IRQ10(40), MT_IRQ10(50), MT_IRQ10(60),
    MT_IRQ10(70),
#if MT_IRQ_SLOTS > 80
    MT_IRQ10(80),
#endif
#if MT_IRQ_SLOTS > 90
    MT_IRQ10(90),
#endif
#if MT_IRQ_SLOTS > 100
    MT_IRQ10(100), MT_IRQ10(110), MT_IRQ10(120), MT_IRQ10(130), MT_IRQ10(140),
#endif
#if MT_IRQ_SLOTS > 150
    MT_IRQ10(150),
#endif
};
