/* STM32F4 family (RM0090 F405/F429, RM0368 F401, RM0383 F411, RM0390 F446). */
#ifndef MT_FAMILY_H
#define MT_FAMILY_H

#define MT_NUM_IRQS 97 /* F446 has the most: up to FMPI2C1_ER (96) */
#define MT_GPIO_BASE(port) (0x40020000u + 0x400u * (port))

#if defined(MT_UART_USART2)
#define MT_UART_IRQN 38
#elif defined(MT_UART_USART3)
#define MT_UART_IRQN 39
#else
#error "stm32f4 port: uart.name must be USART2 or USART3"
#endif

#endif /* MT_FAMILY_H */
