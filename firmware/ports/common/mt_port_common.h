/* Internal interface of the bare-metal board ports (not used by the app, which sees
 * only mt_port.h). The common part (startup.c, port_common.c, one counter_*.c chosen by
 * the board's counter.source) calls the family part (firmware/ports/<family>/family.c:
 * clock tree, GPIO, UART registers), which calls back mt_port_rx_push() from its UART
 * interrupt.
 *
 * Board numbers arrive as macros from the board YAML (microtile.targets.boards.port_defines):
 *   MT_CLK_SOURCE_NONE | MT_CLK_SOURCE_HSI | MT_CLK_SOURCE_HSE_BYPASS
 *   MT_CLK_{HSE,HSI,RESET}_HZ, MT_CLK_PLL_{IN_HZ,N,DIV,Q}, MT_CLK_FLASH_WS,
 *   MT_CLK_{AHB,APB1,APB2}_DIV, MT_CLK_VOS, MT_CLK_OVERDRIVE, MT_CLK_BOOST, MT_CLK_CACHES
 *   MT_UART_<INSTANCE>, MT_UART_BAUD, MT_UART_{TX,RX}_{PORT,PIN}, MT_UART_AF
 *   MT_TRIGGER_PORT, MT_TRIGGER_PIN (absent: no trigger pin) */
#ifndef MT_PORT_COMMON_H
#define MT_PORT_COMMON_H

#include <stdint.h>

#include "mt_family.h" /* the family's MT_NUM_IRQS, MT_UART_IRQN, MT_GPIO_BASE(port) */
#include "mt_port.h"

#ifndef MT_REG32 /* tests/test_counter_dwt.py maps the registers to a simulated DWT */
#define MT_REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))
#endif

#ifndef MT_CLOCK_HZ
#error "MT_CLOCK_HZ must come from the board YAML (CMake -DMT_CLOCK_HZ=...)"
#endif
#ifndef MT_UART_BAUD
#define MT_UART_BAUD 115200u
#endif

/* Iterations of a bounded wait on a hardware flag: >= 5 ms at 16 MHz, ~30 ms of
 * virtual time per wait on QEMU (-icount shift=8), where such flags never come. */
#define MT_WAIT_LIMIT 20000u

/* Returns 1 when (*reg & mask) == value within MT_WAIT_LIMIT polls, else 0. */
int mt_wait_reg(uint32_t addr, uint32_t mask, uint32_t value);

/* ---- family part (ports/<family>/family.c) ---- */

/* Bring the core to MT_CLOCK_HZ (PLL, voltage scaling, flash wait states, caches).
 * Returns MT_PORT_FAIL_* bits (0: as configured) and stores the core clock and the
 * UART's kernel clock actually running (the reset clock after a failure). */
uint32_t mt_family_clock_init(uint32_t *core_hz, uint32_t *uart_hz);

/* GPIO clock on, pins to the UART's alternate function, UART at MT_UART_BAUD from
 * uart_hz with the receive interrupt enabled in the UART (the common part enables
 * it in the NVIC). */
void mt_family_uart_init(uint32_t uart_hz);

/* One byte into the transmit register, waiting (bounded) for room. 0 on time-out. */
int mt_family_uart_putc(uint8_t byte);

/* 1 when the UART has shifted out everything (transmission complete). */
int mt_family_uart_idle(void);

/* UART interrupt: read the received byte(s) and pass them to mt_port_rx_push(). */
void mt_family_uart_irq(void);

/* Enable a GPIO port's clock (port 0 = A). */
void mt_family_gpio_clock(uint32_t port);

/* ---- common part ---- */

void mt_port_rx_push(uint8_t byte);
/* Received bytes were lost after the last one pushed (a UART overrun). */
void mt_port_rx_lost(void);
void mt_gpio_output(uint32_t port, uint32_t pin);
void mt_gpio_alternate(uint32_t port, uint32_t pin, uint32_t af);
void mt_port_fail(uint32_t bits);

/* ---- counter part (counter_<source>.c) ---- */

/* Start the counter with the core clock; returns MT_PORT_FAIL_* bits. */
uint32_t mt_counter_init(uint32_t core_hz);

/* Time-outs for mt_port_uart_read: the CPU sleeps in WFI in between, so the counter
 * part makes sure some interrupt wakes it up at least every millisecond or so. */
void mt_timeout_start(uint32_t ms);
int mt_timeout_expired(void);
void mt_timeout_stop(void);

#endif /* MT_PORT_COMMON_H */
