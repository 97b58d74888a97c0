/* Zephyr port of mt_port.h: the device app (firmware/app/) on any Zephyr board.
 *
 *   UART      devicetree chosen "microtile,uart", else "zephyr,console" (on the
 *             Nucleo boards: the ST-LINK virtual COM port). Receive is interrupt
 *             driven into a ring buffer, transmit is uart_poll_out().
 *   counter   timing API (timing_init/timing_start/timing_counter_get): DWT CYCCNT
 *             on Cortex-M, 32 bits, extended here to 64 bits on every read.
 *   trigger   GPIO at devicetree alias "microtile-trigger" (optional); interrupts are
 *             locked while it is high (CONFIG_MICROTILE_MEASURE_IRQ_LOCK).
 *   reset     sys_reboot(SYS_REBOOT_COLD).
 *   faults    k_sys_fatal_error_handler() reports the faulting PC over the link.
 *
 * Built only by the Zephyr module (zephyr/CMakeLists.txt), never by the bare-metal
 * build, which takes its port from firmware/ports/<port>/. */
#include <zephyr/device.h>
#include <zephyr/devicetree.h>
#include <zephyr/drivers/gpio.h>
#include <zephyr/drivers/uart.h>
#include <zephyr/fatal.h>
#include <zephyr/kernel.h>
#include <zephyr/sys/reboot.h>
#include <zephyr/timing/timing.h>

#include "mt_port.h"

#if DT_HAS_CHOSEN(microtile_uart)
#define MT_UART_NODE DT_CHOSEN(microtile_uart)
#elif DT_HAS_CHOSEN(zephyr_console)
#define MT_UART_NODE DT_CHOSEN(zephyr_console)
#else
#error "no UART for the microtile link: set the devicetree chosen node microtile,uart (or zephyr,console)"
#endif

#define MT_TRIGGER_NODE DT_ALIAS(microtile_trigger)
#define MT_HAS_TRIGGER DT_NODE_HAS_STATUS(MT_TRIGGER_NODE, okay)

#ifndef CONFIG_MICROTILE_RX_RING_SIZE
#define CONFIG_MICROTILE_RX_RING_SIZE 1024
#endif

static const struct device *const mt_uart = DEVICE_DT_GET(MT_UART_NODE);

#if MT_HAS_TRIGGER
static const struct gpio_dt_spec mt_trigger = GPIO_DT_SPEC_GET(MT_TRIGGER_NODE, gpios);
#endif

/* ---- UART: receive ring filled by the interrupt (one producer, one consumer) ---- */

static volatile uint8_t mt_rx_ring[CONFIG_MICROTILE_RX_RING_SIZE];
static volatile uint32_t mt_rx_head; /* written by the ISR only */
static volatile uint32_t mt_rx_tail; /* written by the app only */
static K_SEM_DEFINE(mt_rx_sem, 0, 1);

static void mt_uart_isr(const struct device *dev, void *user_data)
{
    ARG_UNUSED(user_data);
    if (!uart_irq_update(dev)) {
        return;
    }
    while (uart_irq_rx_ready(dev)) {
        uint8_t buf[16];
        int n = uart_fifo_read(dev, buf, sizeof(buf));
        if (n <= 0) {
            break;
        }
        uint32_t head = mt_rx_head;
        for (int i = 0; i < n; i++) {
            if (head - mt_rx_tail < CONFIG_MICROTILE_RX_RING_SIZE) { /* else drop: the CRC catches it */
                mt_rx_ring[head % CONFIG_MICROTILE_RX_RING_SIZE] = buf[i];
                head++;
            }
        }
        mt_rx_head = head;
        k_sem_give(&mt_rx_sem);
    }
}

void mt_port_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uart_poll_out(mt_uart, data[i]);
    }
}

void mt_port_uart_flush(void)
{
    /* uart_poll_out() returns once the last byte is in the transmit register; wait
     * out two character times (10 bits each at the slowest rate we use, 9600 baud)
     * so it leaves the shift register too. */
    k_busy_wait(2100);
}

static int mt_rx_pop(uint8_t *byte)
{
    uint32_t tail = mt_rx_tail;
    if (tail == mt_rx_head) {
        return 0;
    }
    *byte = mt_rx_ring[tail % CONFIG_MICROTILE_RX_RING_SIZE];
    mt_rx_tail = tail + 1u;
    return 1;
}

int mt_port_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    if (mt_rx_pop(byte)) {
        return 1;
    }
    if (timeout_ms == 0) {
        return 0;
    }
    int64_t deadline = k_uptime_get() + timeout_ms;
    for (;;) {
        int64_t left = deadline - k_uptime_get();
        if (left <= 0) {
            return mt_rx_pop(byte);
        }
        /* the semaphore may hold a give for bytes already taken: loop and re-check */
        (void)k_sem_take(&mt_rx_sem, K_MSEC(left));
        if (mt_rx_pop(byte)) {
            return 1;
        }
    }
}

/* ---- counter: timing API, 32-bit DWT CYCCNT extended to 64 bits ---- */

static uint32_t mt_cyc_last;
static uint64_t mt_cyc_high;

uint64_t mt_port_counter_read(void)
{
    /* One wrap between two reads is seen (the low word went down); each measured
     * layer is read before and after, so a layer may take up to 2^32 cycles
     * (25 s at 168 MHz, 8.9 s at 480 MHz). Branch-free: same cost every read. */
    unsigned int key = irq_lock();
    uint32_t now = (uint32_t)timing_counter_get();
    mt_cyc_high += (uint64_t)(now < mt_cyc_last) << 32;
    mt_cyc_last = now;
    uint64_t value = mt_cyc_high | now;
    irq_unlock(key);
    return value;
}

void mt_port_counter_start(void)
{
    /* the timing API started the counter at boot; the app checks it advances */
}

uint64_t mt_port_counter_delta(uint64_t start, uint64_t end)
{
    return end - start;
}

static uint32_t mt_status; /* MT_PORT_FAIL_* */

uint32_t mt_port_counter_unit(void)
{
    return (mt_status & MT_PORT_FAIL_COUNTER) ? MT_COUNTER_UNIT_NONE : MT_COUNTER_UNIT_CYCLES;
}

uint32_t mt_port_status(void)
{
    return mt_status;
}

const char *mt_port_status_text(void)
{
    /* Zephyr sets up the clock tree before main(); only the counter is checked here */
    return (mt_status & MT_PORT_FAIL_COUNTER) ? "cycle counter (timing API) does not count" : "ok";
}

uint32_t mt_port_clock_hz(void)
{
    return (uint32_t)timing_freq_get();
}

/* ---- trigger ---- */

#ifdef CONFIG_MICROTILE_MEASURE_IRQ_LOCK
static unsigned int mt_irq_key;
#endif

void mt_port_trigger_set(void)
{
#if MT_HAS_TRIGGER
    (void)gpio_pin_set_dt(&mt_trigger, 1);
#endif
#ifdef CONFIG_MICROTILE_MEASURE_IRQ_LOCK
    mt_irq_key = irq_lock();
#endif
}

void mt_port_trigger_clear(void)
{
#ifdef CONFIG_MICROTILE_MEASURE_IRQ_LOCK
    irq_unlock(mt_irq_key);
#endif
#if MT_HAS_TRIGGER
    (void)gpio_pin_set_dt(&mt_trigger, 0);
#endif
}

/* ---- stack (the main thread's, for stack painting) ---- */

uint8_t *mt_port_stack_bottom(void)
{
    return (uint8_t *)k_current_get()->stack_info.start;
}

uint8_t *mt_port_stack_top(void)
{
    const struct k_thread *self = k_current_get();
    return (uint8_t *)(self->stack_info.start + self->stack_info.size);
}

/* ---- reset, faults, init ---- */

void mt_port_reset(void)
{
    sys_reboot(SYS_REBOOT_COLD);
}

void k_sys_fatal_error_handler(unsigned int reason, const struct arch_esf *esf)
{
    ARG_UNUSED(reason);
    mt_fault f = {0};
#if defined(CONFIG_ARM)
    if (esf != NULL) {
        f.pc = esf->basic.pc;
        f.lr = esf->basic.lr;
        f.flags = MT_FAULT_FRAME_VALID;
    }
#else
    ARG_UNUSED(esf);
#endif
    mt_app_fault(&f); /* exception 0: Zephyr has taken the fault registers already */
}

void mt_port_init(void)
{
    timing_init();
    timing_start();
    mt_cyc_last = (uint32_t)timing_counter_get();
    mt_cyc_high = 0;
    k_busy_wait(10);
    if ((uint32_t)timing_counter_get() == mt_cyc_last) {
        mt_status |= MT_PORT_FAIL_COUNTER;
    }
#if MT_HAS_TRIGGER
    if (gpio_is_ready_dt(&mt_trigger)) {
        (void)gpio_pin_configure_dt(&mt_trigger, GPIO_OUTPUT_INACTIVE);
    }
#endif
    while (!device_is_ready(mt_uart)) {
        /* no link to report on: the host times out and says the board is silent */
        k_sleep(K_FOREVER);
    }
    uart_irq_callback_user_data_set(mt_uart, mt_uart_isr, NULL);
    uart_irq_rx_enable(mt_uart);
}
