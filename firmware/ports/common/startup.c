/* Cortex-M startup shared by every bare-metal port: vector table (sized by the
 * family's MT_NUM_IRQS, the link UART's handler at MT_UART_IRQN), .data/.bss
 * initialisation, FPU enable, faults (reported to the app with their registers). */
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
#define MT_SCB_SHCSR (*(volatile uint32_t *)0xE000ED24u)
#define MT_SHCSR_FAULTS_ENA (7u << 16) /* MemManage, BusFault, UsageFault: own exceptions */

void Reset_Handler(void)
{
    /* FPU first: the compiler may use VFP registers anywhere after this. */
    MT_SCB_CPACR |= (0xFu << 20);
    __asm volatile("dsb\n\tisb" ::: "memory");
    /* each configurable fault as its own exception, so the FAULT frame names it
     * (one inside an interrupt or the fault handler still escalates to HardFault) */
    MT_SCB_SHCSR |= MT_SHCSR_FAULTS_ENA;

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

/* Faults and unexpected exceptions, one handler: it may run on a corrupt stack (the
 * fault may be a stack overflow, or the stacking itself may have faulted), so it
 * reads the stacked PC and LR only from a frame that lies inside the stack, before
 * anything else touches the stack, then moves MSP to the top of a fresh stack and
 * hands the exception number (IPSR) and the fault registers to the app. */
__attribute__((naked)) void HardFault_Handler(void)
{
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r12, msp\n\t"
        "mrsne r12, psp\n\t"
        "mrs r0, ipsr\n\t"
        "movs r1, #0\n\t"         /* pc, lr, valid: unknown until the frame checks out */
        "movs r2, #0\n\t"
        "movs r3, #0\n\t"
        "ldr r4, =_sstack\n\t"
        "cmp r12, r4\n\t"
        "blo 1f\n\t"
        "ldr r4, =_estack - 32\n\t" /* the basic frame is 8 words */
        "cmp r12, r4\n\t"
        "bhi 1f\n\t"
        "ldr r1, [r12, #24]\n\t"  /* stacked PC */
        "ldr r2, [r12, #20]\n\t"  /* stacked LR */
        "movs r3, #1\n"
        "1:\n\t"
        "ldr r4, =_estack\n\t"
        "msr msp, r4\n\t"
        "b mt_fault_report\n\t"
        ".ltorg\n");
}

void Default_Handler(void) __attribute__((alias("HardFault_Handler")));

#define MT_SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define MT_SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define MT_SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define MT_SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)

void mt_fault_report(uint32_t exception, uint32_t pc, uint32_t lr, uint32_t valid) __attribute__((noreturn, used));
void mt_fault_report(uint32_t exception, uint32_t pc, uint32_t lr, uint32_t valid)
{
    mt_fault f;
    f.exception = exception & 0x1FFu;
    f.pc = pc;
    f.lr = lr;
    f.cfsr = MT_SCB_CFSR;
    f.hfsr = MT_SCB_HFSR;
    f.mmfar = MT_SCB_MMFAR;
    f.bfar = MT_SCB_BFAR;
    f.flags = valid ? MT_FAULT_FRAME_VALID : 0u;
    mt_app_fault(&f);
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
    HardFault_Handler, /* HardFault, MemManage, BusFault, UsageFault: one handler */
    HardFault_Handler,
    HardFault_Handler,
    HardFault_Handler,
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
