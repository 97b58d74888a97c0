/* STM32H7 family (RM0433 for the H743/H753): AHB4 GPIO, USART3 on the VCP,
 * Cortex-M7 (DWT behind a software lock). */
#ifndef MT_FAMILY_H
#define MT_FAMILY_H

#define MT_NUM_IRQS 150 /* STM32H743: up to WAKEUP_PIN (149) */
#define MT_GPIO_BASE(port) (0x58020000u + 0x400u * (port))
#define MT_DWT_UNLOCK 1

#if defined(MT_UART_USART3)
#define MT_UART_IRQN 39
#else
#error "stm32h7 port: uart.name must be USART3"
#endif

#endif /* MT_FAMILY_H */
