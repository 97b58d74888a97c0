/* The UART register layout STM32L4 (LPUART/USART) and STM32H7 (USART) share: status
 * in ISR, flags cleared through ICR, separate RDR/TDR (RM0432 / RM0433). A family
 * defines MT_UART_BASE, includes this once from its family.c, and keeps only its own
 * clocking, pins and baud-rate formula. */
#ifndef MT_USART_ISR_H
#define MT_USART_ISR_H

#include "mt_port_common.h"

#define UART_CR1 (MT_UART_BASE + 0x00u)
#define UART_BRR (MT_UART_BASE + 0x0Cu)
#define UART_ISR (MT_UART_BASE + 0x1Cu)
#define UART_ICR (MT_UART_BASE + 0x20u)
#define UART_RDR (MT_UART_BASE + 0x24u)
#define UART_TDR (MT_UART_BASE + 0x28u)
#define CR1_UE (1u << 0)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define CR1_RXNEIE (1u << 5)
#define ISR_ORE (1u << 3)
#define ISR_RXNE (1u << 5)
#define ISR_TC (1u << 6)
#define ISR_TXE (1u << 7)
#define ICR_ORECF (1u << 3)

int mt_family_uart_putc(uint8_t byte)
{
    if (!mt_wait_reg(UART_ISR, ISR_TXE, ISR_TXE)) {
        return 0;
    }
    MT_REG32(UART_TDR) = byte;
    return 1;
}

int mt_family_uart_idle(void)
{
    return (MT_REG32(UART_ISR) & ISR_TC) != 0;
}

void mt_family_uart_irq(void)
{
    uint32_t isr = MT_REG32(UART_ISR);
    if (isr & ISR_RXNE) {
        mt_port_rx_push((uint8_t)MT_REG32(UART_RDR)); /* reading RDR clears RXNE */
    }
    if (isr & ISR_ORE) {
        MT_REG32(UART_ICR) = ICR_ORECF; /* an overrun lost a byte */
        mt_port_rx_lost();
    }
}

#endif /* MT_USART_ISR_H */
