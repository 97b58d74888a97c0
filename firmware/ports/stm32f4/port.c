/* STM32F4 port: USART2 link UART (polled), SysTick instruction counter under QEMU
 * -icount, reset. Board numbers (clock, icount shift) come from CMake, which reads
 * them from the board YAML. */
#include <stdint.h>

#include "mt_port.h"

#ifndef MT_CLOCK_HZ
#error "MT_CLOCK_HZ must come from the board YAML (CMake -DMT_CLOCK_HZ=...)"
#endif
#ifndef MT_APB1_HZ
#define MT_APB1_HZ (MT_CLOCK_HZ / 4u)
#endif
#ifndef MT_UART_BAUD
#define MT_UART_BAUD 115200u
#endif
#if !defined(MT_COUNTER_SYSTICK_ICOUNT)
#error "this port implements only the SysTick/-icount instruction counter (counter.source: systick-icount)"
#endif
#ifndef MT_ICOUNT_SHIFT
#define MT_ICOUNT_SHIFT 8
#endif

#define REG32(addr) (*(volatile uint32_t *)(addr))

/* RCC, GPIOA, USART2 (RM0090). On QEMU only the USART is modelled; the rest are
 * harmless writes that a real STM32F4 needs. */
#define RCC_AHB1ENR REG32(0x40023830u)
#define RCC_APB1ENR REG32(0x40023840u)
#define GPIOA_MODER REG32(0x40020000u)
#define GPIOA_AFRL REG32(0x40020020u)
#define USART2_SR REG32(0x40004400u)
#define USART2_DR REG32(0x40004404u)
#define USART2_BRR REG32(0x40004408u)
#define USART2_CR1 REG32(0x4000440Cu)
#define USART_SR_ORE (1u << 3)
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TC (1u << 6)
#define USART_SR_TXE (1u << 7)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_RXNEIE (1u << 5)
#define NVIC_ISER1 REG32(0xE000E104u)
#define MT_USART2_IRQN 38u
#define USART_CR1_TE (1u << 3)
#define USART_CR1_UE (1u << 13)

#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define SCB_ICSR REG32(0xE000ED04u)
#define SCB_AIRCR REG32(0xE000ED0Cu)
#define SCB_SHPR3 REG32(0xE000ED20u)
#define ICSR_PENDSTSET (1u << 26)

/* Instructions the SysTick handler (mt_systick.S) executes per wrap. QEMU counts the
 * handler's instructions and nothing for exception entry/return; the calibration test
 * (tests/test_qemu_device.py) checks this. */
#define MT_SYSTICK_IRQ_INSNS 7u
#define MT_SYSTICK_WRAP_TICKS (1u << 24)

/* Counter scale. Under -icount shift=S one instruction is 2^S ns, i.e.
 * clock_hz * 2^S / 1e9 SysTick ticks (43.008 at 168 MHz, shift 8). Raw counts are kept
 * in units of 1/den tick so that ratio is the exact integer num:
 * raw = ticks * den, one instruction = num raw units. */
typedef struct {
    uint64_t base; /* raw value at the last wrap, minus the handlers' own instructions */
    uint64_t inc;  /* added per wrap: wrap_ticks * den - MT_SYSTICK_IRQ_INSNS * num */
} mt_systick_state;

/* read by mt_systick.S: keep the layout (base at 0, inc at 8) */
mt_systick_state mt_systick __attribute__((aligned(8)));
static uint64_t mt_raw_wrap; /* wrap_ticks * den */
static uint32_t mt_den;
static uint64_t mt_num;

static uint64_t mt_gcd(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void mt_counter_init(void)
{
    uint64_t num = (uint64_t)MT_CLOCK_HZ << MT_ICOUNT_SHIFT;
    uint64_t den = 1000000000u;
    uint64_t g = mt_gcd(num, den);
    mt_num = num / g;
    mt_den = (uint32_t)(den / g);
    mt_raw_wrap = (uint64_t)MT_SYSTICK_WRAP_TICKS * mt_den;
    mt_systick.base = 0;
    mt_systick.inc = mt_raw_wrap - (uint64_t)MT_SYSTICK_IRQ_INSNS * mt_num;

    SCB_SHPR3 = (SCB_SHPR3 & 0x00FFFFFFu); /* SysTick: highest configurable priority */
    SYST_RVR = MT_SYSTICK_WRAP_TICKS - 1u;
    SYST_CVR = 0;
    SYST_CSR = 0x7u; /* enable, interrupt, processor clock */
}

uint64_t mt_port_counter_read(void)
{
    /* Branch-free after the CVR sample so every read costs the same instructions. */
    uint32_t primask;
    __asm volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    uint64_t base = mt_systick.base;
    uint32_t cvr = SYST_CVR;
    uint32_t pending = (SCB_ICSR & ICSR_PENDSTSET) >> 26;
    __asm volatile("msr primask, %0" ::"r"(primask) : "memory");
    /* A wrap the handler has not taken yet: it counts only if our CVR sample came
     * after the reload (CVR near the top). The handler's own instructions still lie
     * ahead, so add the bare wrap, not inc. */
    uint32_t after_reload = (0x800000u - cvr) >> 31;
    return base + (uint64_t)(pending & after_reload) * mt_raw_wrap +
           (uint64_t)(MT_SYSTICK_WRAP_TICKS - 1u - cvr) * mt_den;
}

uint64_t mt_port_counter_delta(uint64_t start, uint64_t end)
{
    return (end - start + mt_num / 2u) / mt_num;
}

uint32_t mt_port_counter_unit(void)
{
    return MT_COUNTER_UNIT_INSTRUCTIONS;
}

uint32_t mt_port_clock_hz(void)
{
    return MT_CLOCK_HZ;
}

static void mt_uart_init(void)
{
    RCC_AHB1ENR |= 1u << 0;  /* GPIOA */
    RCC_APB1ENR |= 1u << 17; /* USART2 */
    /* PA2 = TX, PA3 = RX, alternate function 7 */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 4)) | (0xAu << 4);
    GPIOA_AFRL = (GPIOA_AFRL & ~(0xFFu << 8)) | (0x77u << 8);
    USART2_BRR = (MT_APB1_HZ + MT_UART_BAUD / 2u) / MT_UART_BAUD;
    USART2_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE | USART_CR1_RXNEIE;
    NVIC_ISER1 = 1u << (MT_USART2_IRQN - 32u);
}

/* RX ring buffer filled by the USART2 interrupt, so the CPU can sleep in WFI while
 * it waits for the host (and QEMU's I/O thread is not slowed by SR polling). */
#define MT_RX_RING 1024u
static volatile uint8_t mt_rx_ring[MT_RX_RING];
static volatile uint32_t mt_rx_head, mt_rx_tail;

void USART2_IRQHandler(void);
void USART2_IRQHandler(void)
{
    uint32_t sr = USART2_SR;
    if (sr & (USART_SR_RXNE | USART_SR_ORE)) {
        uint8_t b = (uint8_t)USART2_DR; /* clears RXNE (and ORE after the SR read) */
        uint32_t head = mt_rx_head;
        if ((sr & USART_SR_RXNE) && head - mt_rx_tail < MT_RX_RING) {
            mt_rx_ring[head % MT_RX_RING] = b;
            mt_rx_head = head + 1u;
        }
    }
}

void mt_port_init(void)
{
    mt_uart_init();
    mt_counter_init();
}

void mt_port_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        while ((USART2_SR & USART_SR_TXE) == 0) {
        }
        USART2_DR = data[i];
    }
}

void mt_port_uart_flush(void)
{
    while ((USART2_SR & USART_SR_TC) == 0) {
    }
}

int mt_port_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    uint64_t start = timeout_ms ? mt_port_counter_read() : 0u;
    uint64_t limit = (uint64_t)timeout_ms * (MT_CLOCK_HZ / 1000u);
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        if (mt_rx_head != mt_rx_tail) {
            uint32_t tail = mt_rx_tail;
            *byte = mt_rx_ring[tail % MT_RX_RING];
            mt_rx_tail = tail + 1u;
            __asm volatile("cpsie i" ::: "memory");
            return 1;
        }
        if (timeout_ms == 0) {
            __asm volatile("cpsie i" ::: "memory");
            return 0;
        }
        /* sleep until an interrupt (a byte, or a SysTick wrap); WFI wakes on a pending
         * interrupt even with PRIMASK set, so no byte slips in between */
        __asm volatile("wfi\n\tcpsie i" ::: "memory");
        if (mt_port_counter_delta(start, mt_port_counter_read()) >= limit) {
            return 0;
        }
    }
}

void mt_port_trigger_set(void)
{
    /* no trigger pin on the emulated board */
}

void mt_port_trigger_clear(void)
{
}

extern uint8_t _sstack[], _estack[];

uint8_t *mt_port_stack_bottom(void)
{
    return _sstack;
}

uint8_t *mt_port_stack_top(void)
{
    return _estack;
}

void mt_port_reset(void)
{
    __asm volatile("dsb" ::: "memory");
    SCB_AIRCR = (0x5FAu << 16) | (1u << 2); /* VECTKEY | SYSRESETREQ */
    __asm volatile("dsb" ::: "memory");
    for (;;) {
    }
}
