/* Board port interface: what the device app needs from a board. One implementation
 * per MCU family in firmware/ports/<port>/. */
#ifndef MT_PORT_H
#define MT_PORT_H

#include <stddef.h>
#include <stdint.h>

/* Counter units reported over the link (INFO.counter_unit). */
#define MT_COUNTER_UNIT_INSTRUCTIONS 0u /* QEMU: SysTick under -icount */
#define MT_COUNTER_UNIT_CYCLES 1u       /* hardware: DWT CYCCNT */
#define MT_COUNTER_UNIT_NONE 2u         /* no counter (a board image on QEMU: no DWT);
                                           counts are 0 and mean "not available" */

/* Boot status bits (mt_port_status): what the port could not set up. The firmware
 * still serves the link; INFO and a boot LOG frame report them. */
#define MT_PORT_FAIL_HSE 0x01u        /* HSE (ST-LINK MCO) did not start: PLL fed from HSI */
#define MT_PORT_FAIL_PLL 0x02u        /* PLL did not lock: running on the reset clock */
#define MT_PORT_FAIL_VOLTAGE 0x04u    /* voltage scaling / supply not ready: reset clock */
#define MT_PORT_FAIL_OVERDRIVE 0x08u  /* over-drive not ready: reset clock */
#define MT_PORT_FAIL_SWITCH 0x10u     /* system clock switch not confirmed: reset clock */
#define MT_PORT_FAIL_FLASH 0x20u      /* flash wait states not accepted: reset clock */
#define MT_PORT_FAIL_COUNTER 0x40u    /* no cycle counter (DWT CYCCNT does not count) */
#define MT_PORT_FAIL_UART 0x80u       /* a UART transmit wait timed out */
#define MT_PORT_FAIL_CLOCK 0x3Eu      /* any failure that left the reset clock running */

/* Clocks, UART, counter. Call once at boot, before anything else here. */
void mt_port_init(void);

/* Core clock in Hz actually running: the board YAML's clock_hz, or the reset clock
 * when the clock tree could not be set up (see mt_port_status). */
uint32_t mt_port_clock_hz(void);

/* MT_PORT_FAIL_* bits, 0 when the board came up as configured. */
uint32_t mt_port_status(void);

/* mt_port_status() as short text, e.g. "pll-timeout; running on the reset clock";
 * "ok" when it is 0. */
const char *mt_port_status_text(void);

/* Write n bytes to the link UART; returns when all are queued in the UART. */
void mt_port_uart_write(const uint8_t *data, size_t n);

/* Read one byte from the link UART. Returns 1 and stores it in *byte, or 0 when
 * nothing arrived within timeout_ms milliseconds of counter time
 * (timeout_ms == 0: just poll once). Where received bytes were lost (the receive
 * buffer was full, or the UART overran), it returns MT_PORT_RX_LOST with a 0x00 in
 * their place, which ends the frame they belonged to. */
int mt_port_uart_read(uint8_t *byte, uint32_t timeout_ms);
#define MT_PORT_RX_LOST 2

/* Wait until the UART has shifted out every byte (before a reset). */
void mt_port_uart_flush(void);

/* Raw 64-bit monotonic counter. Cheap, with a fixed instruction count, so the
 * difference of two reads is exact after mt_port_counter_delta(). The raw scale is
 * port specific: never interpret it directly. */
uint64_t mt_port_counter_read(void);

/* Counter units (instructions or cycles) between two raw reads, rounded to the
 * nearest unit, with the counter's own interrupt handling subtracted. */
uint64_t mt_port_counter_delta(uint64_t start, uint64_t end);

/* MT_COUNTER_UNIT_INSTRUCTIONS, MT_COUNTER_UNIT_CYCLES or MT_COUNTER_UNIT_NONE. */
uint32_t mt_port_counter_unit(void);

/* (Re-)enable the counter before a measurement (INVOKE, CALIBRATE): a debugger may
 * have stopped it since boot (pyOCD clears DEMCR.TRCENA when its session closes,
 * which freezes the DWT). The app then checks that the counter advances. */
void mt_port_counter_start(void);

/* Measurement trigger (a GPIO edge for a power probe); no-ops on QEMU. */
void mt_port_trigger_set(void);
void mt_port_trigger_clear(void);

/* Stack region (for stack painting): [bottom, top). */
uint8_t *mt_port_stack_bottom(void);
uint8_t *mt_port_stack_top(void);

/* Reset the MCU; does not return. */
void mt_port_reset(void) __attribute__((noreturn));

/* What the port knows about a CPU fault. exception is the IPSR exception number
 * (3 HardFault, 4 MemManage, 5 BusFault, 6 UsageFault, 2 NMI, 16 + n IRQ n; 0 when
 * unknown); the rest are the System Control Block's fault registers and, when
 * flags has MT_FAULT_FRAME_VALID (mt_proto.h), the PC and LR of the stacked frame. */
#define MT_FAULT_FRAME_VALID 0x01u

typedef struct {
    uint32_t exception;
    uint32_t pc, lr, cfsr, hfsr, mmfar, bfar;
    uint32_t flags;
} mt_fault;

/* Called by the port when the CPU faults (HardFault etc.), on a fresh stack; the app
 * reports it over the link (a FAULT frame) and resets. */
void mt_app_fault(const mt_fault *fault) __attribute__((noreturn));

#endif /* MT_PORT_H */
