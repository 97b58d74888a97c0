/* The board-independent half of the bare-metal ports: boot order, boot status, the
 * interrupt-driven UART receive ring, bounded UART transmit, trigger GPIO, stack and
 * reset. The family half (ports/<family>/family.c) owns the registers. */
#include <stdint.h>

#include "mt_port_common.h"

/* GPIO registers, identical on STM32F4, L4 and H7 (RM0090/RM0432/RM0433 "GPIO registers") */
#define MT_GPIO_MODER(p) MT_REG32(MT_GPIO_BASE(p) + 0x00u)
#define MT_GPIO_OSPEEDR(p) MT_REG32(MT_GPIO_BASE(p) + 0x08u)
#define MT_GPIO_BSRR(p) MT_REG32(MT_GPIO_BASE(p) + 0x18u)
#define MT_GPIO_AFR(p, i) MT_REG32(MT_GPIO_BASE(p) + 0x20u + 4u * (i))

#define MT_NVIC_ISER(n) MT_REG32(0xE000E100u + 4u * (n))
#define MT_SCB_AIRCR MT_REG32(0xE000ED0Cu)

static uint32_t mt_status;
static uint32_t mt_core_hz;

int mt_wait_reg(uint32_t addr, uint32_t mask, uint32_t value)
{
    for (uint32_t i = 0; i < MT_WAIT_LIMIT; i++) {
        if ((MT_REG32(addr) & mask) == value) {
            return 1;
        }
    }
    return 0;
}

void mt_port_fail(uint32_t bits)
{
    mt_status |= bits;
}

uint32_t mt_port_status(void)
{
    return mt_status;
}

const char *mt_port_status_text(void)
{
    /* Fixed texts so no formatting code is needed; the INFO reply carries the bits. */
    static const struct {
        uint32_t bit;
        const char *text;
    } names[] = {
        {MT_PORT_FAIL_HSE, "hse-timeout"},         {MT_PORT_FAIL_PLL, "pll-timeout"},
        {MT_PORT_FAIL_VOLTAGE, "voltage-timeout"}, {MT_PORT_FAIL_OVERDRIVE, "overdrive-timeout"},
        {MT_PORT_FAIL_SWITCH, "switch-timeout"},   {MT_PORT_FAIL_FLASH, "flash-latency"},
        {MT_PORT_FAIL_COUNTER, "no-cycle-counter"}, {MT_PORT_FAIL_UART, "uart-timeout"},
    };
    static char text[160];
    if (mt_status == 0) {
        return "ok";
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if ((mt_status & names[i].bit) == 0) {
            continue;
        }
        if (n > 0) {
            text[n++] = ' ';
        }
        for (const char *s = names[i].text; *s != '\0' && n < sizeof text - 40u; s++) {
            text[n++] = *s;
        }
    }
    const char *tail = (mt_status & MT_PORT_FAIL_CLOCK) ? "; running on the reset clock" : "";
    for (const char *s = tail; *s != '\0' && n < sizeof text - 1u; s++) {
        text[n++] = *s;
    }
    text[n] = '\0';
    return text;
}

uint32_t mt_port_clock_hz(void)
{
    return mt_core_hz;
}

void mt_gpio_output(uint32_t port, uint32_t pin)
{
    mt_family_gpio_clock(port);
    MT_GPIO_BSRR(port) = 1u << (pin + 16u); /* low */
    MT_GPIO_OSPEEDR(port) |= 3u << (2u * pin);
    MT_GPIO_MODER(port) = (MT_GPIO_MODER(port) & ~(3u << (2u * pin))) | (1u << (2u * pin));
}

void mt_gpio_alternate(uint32_t port, uint32_t pin, uint32_t af)
{
    mt_family_gpio_clock(port);
    uint32_t i = pin / 8u, shift = 4u * (pin % 8u);
    MT_GPIO_AFR(port, i) = (MT_GPIO_AFR(port, i) & ~(0xFu << shift)) | (af << shift);
    MT_GPIO_OSPEEDR(port) |= 2u << (2u * pin);
    MT_GPIO_MODER(port) = (MT_GPIO_MODER(port) & ~(3u << (2u * pin))) | (2u << (2u * pin));
}

/* ---- trigger ---- */

void mt_port_trigger_set(void)
{
#ifdef MT_TRIGGER_PORT
    MT_GPIO_BSRR(MT_TRIGGER_PORT) = 1u << MT_TRIGGER_PIN;
#endif
}

void mt_port_trigger_clear(void)
{
#ifdef MT_TRIGGER_PORT
    MT_GPIO_BSRR(MT_TRIGGER_PORT) = 1u << (MT_TRIGGER_PIN + 16u);
#endif
}

/* ---- UART ---- */

/* RX ring buffer filled by the UART interrupt, so the CPU can sleep in WFI while it
 * waits for the host (and QEMU's I/O thread is not slowed by status polling). When
 * it is full, bytes are dropped and the place of the first gap is kept: there the
 * reader gets a 0x00 flagged MT_PORT_RX_LOST in place of the missing bytes (a second
 * gap before the reader reaches the first is not marked: the CRC of its frame
 * catches it). */
#define MT_RX_RING 1024u
static volatile uint8_t mt_rx_ring[MT_RX_RING];
static volatile uint32_t mt_rx_head, mt_rx_tail;
static volatile uint32_t mt_rx_gap;     /* ring position of the byte after the gap */
static volatile uint32_t mt_rx_gap_set; /* 1 while a gap lies ahead of the reader */

void mt_port_rx_lost(void)
{
    if (!mt_rx_gap_set) {
        mt_rx_gap = mt_rx_head;
        mt_rx_gap_set = 1u;
    }
}

void mt_port_rx_push(uint8_t byte)
{
    uint32_t head = mt_rx_head;
    if (head - mt_rx_tail < MT_RX_RING) {
        mt_rx_ring[head % MT_RX_RING] = byte;
        mt_rx_head = head + 1u;
    } else {
        mt_port_rx_lost();
    }
}

void mt_uart_irq_handler(void); /* in the vector table at MT_UART_IRQN (startup.c) */
void mt_uart_irq_handler(void)
{
    mt_family_uart_irq();
}

void mt_port_uart_write(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!mt_family_uart_putc(data[i])) {
            mt_port_fail(MT_PORT_FAIL_UART);
        }
    }
}

void mt_port_uart_flush(void)
{
    /* bounded: a 520-byte frame takes 45 ms at 115200 baud; this allows far more */
    for (uint32_t i = 0; i < 50u * MT_WAIT_LIMIT && !mt_family_uart_idle(); i++) {
    }
}

int mt_port_uart_read(uint8_t *byte, uint32_t timeout_ms)
{
    int started = 0;
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        int got = 0;
        if (mt_rx_gap_set && mt_rx_gap == mt_rx_tail) {
            /* a 0x00 in place of the lost bytes, also when none came after them */
            mt_rx_gap_set = 0u;
            *byte = 0;
            got = MT_PORT_RX_LOST;
        } else if (mt_rx_head != mt_rx_tail) {
            uint32_t tail = mt_rx_tail;
            *byte = mt_rx_ring[tail % MT_RX_RING];
            mt_rx_tail = tail + 1u;
            got = 1;
        }
        if (got) {
            __asm volatile("cpsie i" ::: "memory");
            if (started) {
                mt_timeout_stop();
            }
            return got;
        }
        if (timeout_ms == 0) {
            __asm volatile("cpsie i" ::: "memory");
            return 0;
        }
        if (!started) {
            mt_timeout_start(timeout_ms);
            started = 1;
        }
        /* sleep until an interrupt (a byte, or a timer tick); WFI wakes on a pending
         * interrupt even with PRIMASK set, so no byte slips in between */
        __asm volatile("wfi\n\tcpsie i" ::: "memory");
        if (mt_timeout_expired()) {
            mt_timeout_stop();
            return 0;
        }
    }
}

/* ---- boot ---- */

void mt_port_init(void)
{
    uint32_t uart_hz = 0;
    mt_port_fail(mt_family_clock_init(&mt_core_hz, &uart_hz));
#ifdef MT_TRIGGER_PORT
    mt_gpio_output(MT_TRIGGER_PORT, MT_TRIGGER_PIN);
#endif
    mt_family_uart_init(uart_hz);
    MT_NVIC_ISER(MT_UART_IRQN / 32u) = 1u << (MT_UART_IRQN % 32u);
    mt_port_fail(mt_counter_init(mt_core_hz));
}

/* ---- stack, reset ---- */

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
    MT_SCB_AIRCR = (0x5FAu << 16) | (1u << 2); /* VECTKEY | SYSRESETREQ */
    __asm volatile("dsb" ::: "memory");
    for (;;) {
    }
}
