/* Instruction counter for QEMU (counter.source: systick-icount): SysTick under
 * -icount counts virtual time, which is instructions x 2^shift ns. Exact to the
 * instruction (docs/protocol.md, "Counters on QEMU"). */
#include <stdint.h>

#include "mt_port_common.h"

#ifndef MT_ICOUNT_SHIFT
#define MT_ICOUNT_SHIFT 8
#endif

#define SYST_CSR MT_REG32(0xE000E010u)
#define SYST_RVR MT_REG32(0xE000E014u)
#define SYST_CVR MT_REG32(0xE000E018u)
#define SCB_ICSR MT_REG32(0xE000ED04u)
#define SCB_SHPR3 MT_REG32(0xE000ED20u)
#define ICSR_PENDSTSET (1u << 26)

/* Instructions the SysTick handler (counter_systick_icount_handler.S) executes per wrap. QEMU counts the
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

/* read by counter_systick_icount_handler.S: keep the layout (base at 0, inc at 8) */
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

uint32_t mt_counter_init(uint32_t core_hz)
{
    (void)core_hz; /* the emulator's clock is MT_CLOCK_HZ: the port leaves it alone */
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
    return 0;
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

void mt_port_counter_start(void)
{
    /* SysTick runs from boot and no debugger touches it on QEMU */
}

uint32_t mt_port_counter_unit(void)
{
    return MT_COUNTER_UNIT_INSTRUCTIONS;
}

/* Time-outs in instructions at MT_CLOCK_HZ; the SysTick wrap (every 2^24 ticks, about
 * 0.1 s of virtual time) wakes WFI. */
static uint64_t mt_timeout_begin, mt_timeout_limit;

void mt_timeout_start(uint32_t ms)
{
    mt_timeout_begin = mt_port_counter_read();
    mt_timeout_limit = (uint64_t)ms * (MT_CLOCK_HZ / 1000u);
}

int mt_timeout_expired(void)
{
    return mt_port_counter_delta(mt_timeout_begin, mt_port_counter_read()) >= mt_timeout_limit;
}

void mt_timeout_stop(void)
{
}
