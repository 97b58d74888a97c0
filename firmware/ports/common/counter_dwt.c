/* Cycle counter for real boards (counter.source: dwt): the DWT's 32-bit CYCCNT,
 * extended to 64 bits in software, and SysTick as a millisecond tick for time-outs
 * (only while mt_port_uart_read waits, so no interrupt lands in a measured layer).
 *
 * The extension counts a wrap whenever a read sees a smaller value than the previous
 * one, so two reads must be less than 2^32 cycles apart (23.8 s at 180 MHz, 8.9 s at
 * 480 MHz): true for every layer measured by the app (a layer is one measurement;
 * INVOKE totals are sums of layers). The millisecond tick also reads the counter.
 *
 * Where CYCCNT does not count (QEMU models no DWT) the port reports the unit
 * MT_COUNTER_UNIT_NONE and MT_PORT_FAIL_COUNTER, and every count is 0: the host
 * prints "n/a", never 0 cycles. */
#include <stdint.h>

#include "mt_port_common.h"

#define DEMCR MT_REG32(0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL MT_REG32(0xE0001000u)
#define DWT_CTRL_CYCCNTENA (1u << 0)
#define DWT_CTRL_NOCYCCNT (1u << 25)
#define DWT_CYCCNT MT_REG32(0xE0001004u)
#define DWT_LAR MT_REG32(0xE0001FB0u) /* Cortex-M7: software lock of the DWT */
#define DWT_LAR_KEY 0xC5ACCE55u

#define SYST_CSR MT_REG32(0xE000E010u)
#define SYST_RVR MT_REG32(0xE000E014u)
#define SYST_CVR MT_REG32(0xE000E018u)
#define SCB_ICSR MT_REG32(0xE000ED04u)
#define ICSR_PENDSTCLR (1u << 25)

/* PRIMASK save/restore around a read (no interrupt between CYCCNT and the wrap
 * count); a host build of this file for tests has no PRIMASK. */
#ifdef MT_HOST_TEST
#define MT_IRQ_SAVE(v) ((v) = 0u)
#define MT_IRQ_RESTORE(v) ((void)(v))
#else
#define MT_IRQ_SAVE(v) __asm volatile("mrs %0, primask\n\tcpsid i" : "=r"(v)::"memory")
#define MT_IRQ_RESTORE(v) __asm volatile("msr primask, %0" ::"r"(v) : "memory")
#endif

static uint32_t mt_cyc_hi;   /* wraps seen */
static uint32_t mt_cyc_last; /* the previous CYCCNT read */
static uint32_t mt_have_dwt;
static uint32_t mt_ms_reload;
static volatile uint32_t mt_ms_ticks;

/* Trace on (the DWT is dead without DEMCR.TRCENA), unlocked where needed. */
static void mt_dwt_power(void)
{
    DEMCR |= DEMCR_TRCENA;
#ifdef MT_DWT_UNLOCK /* mt_family.h: the Cortex-M7 DWT needs its lock access key */
    DWT_LAR = DWT_LAR_KEY;
#endif
}

uint32_t mt_counter_init(uint32_t core_hz)
{
    mt_dwt_power();
    uint32_t fail = 0;
    if ((DWT_CTRL & DWT_CTRL_NOCYCCNT) == 0) {
        DWT_CYCCNT = 0;
        DWT_CTRL |= DWT_CTRL_CYCCNTENA;
        uint32_t c0 = DWT_CYCCNT;
        for (volatile uint32_t i = 0; i < 16u; i++) {
        }
        mt_have_dwt = DWT_CYCCNT != c0;
    }
    if (!mt_have_dwt) {
        fail |= MT_PORT_FAIL_COUNTER;
    }
    mt_cyc_last = mt_have_dwt ? DWT_CYCCNT : 0u;
    /* SysTick: 1 ms at the core clock, interrupt enabled only while waiting */
    mt_ms_reload = core_hz / 1000u > 0x1000000u ? 0xFFFFFFu : core_hz / 1000u - 1u;
    SYST_RVR = mt_ms_reload;
    SYST_CVR = 0;
    SYST_CSR = 0x5u; /* enable, processor clock, no interrupt */
    return fail;
}

void mt_port_counter_start(void)
{
    /* pyOCD clears DEMCR.TRCENA when its session closes, about 0.1 s after the reset
     * that started this firmware: CYCCNT then stands still until it is set again.
     * CYCCNT keeps its value meanwhile, so the 64-bit extension stays consistent. */
    if (mt_have_dwt) {
        mt_dwt_power();
        DWT_CTRL |= DWT_CTRL_CYCCNTENA;
    }
}

uint64_t mt_port_counter_read(void)
{
    uint32_t primask;
    MT_IRQ_SAVE(primask);
    uint32_t now = DWT_CYCCNT;
    mt_cyc_hi += (uint32_t)(now < mt_cyc_last); /* branch-free: same cycles every read */
    mt_cyc_last = now;
    uint32_t hi = mt_cyc_hi;
    MT_IRQ_RESTORE(primask);
    return ((uint64_t)hi << 32) | now;
}

uint64_t mt_port_counter_delta(uint64_t start, uint64_t end)
{
    return end - start;
}

uint32_t mt_port_counter_unit(void)
{
    return mt_have_dwt ? MT_COUNTER_UNIT_CYCLES : MT_COUNTER_UNIT_NONE;
}

void SysTick_Handler(void);
void SysTick_Handler(void)
{
    mt_ms_ticks++;
    if (mt_have_dwt) {
        (void)mt_port_counter_read(); /* keeps the 64-bit extension current while idle */
    }
}

static uint32_t mt_timeout_begin, mt_timeout_ms;

void mt_timeout_start(uint32_t ms)
{
    mt_timeout_begin = mt_ms_ticks;
    mt_timeout_ms = ms;
    SYST_CVR = 0;
    SYST_CSR = 0x7u; /* enable, interrupt, processor clock */
}

int mt_timeout_expired(void)
{
    return mt_ms_ticks - mt_timeout_begin >= mt_timeout_ms;
}

void mt_timeout_stop(void)
{
    SYST_CSR = 0x5u;            /* no more ticks ... */
    SCB_ICSR = ICSR_PENDSTCLR; /* ... not even one already pending */
}
