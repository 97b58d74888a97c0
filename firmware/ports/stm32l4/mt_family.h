/* STM32L4 / L4+ family (RM0432 for the L4R5/L4S5): AHB2 GPIO, LPUART1 on the VCP. */
#ifndef MT_FAMILY_H
#define MT_FAMILY_H

#define MT_NUM_IRQS 95 /* STM32L4R5: up to DMAMUX1_OVR (94) */
#define MT_GPIO_BASE(port) (0x48000000u + 0x400u * (port))

#if defined(MT_UART_LPUART1)
#define MT_UART_IRQN 70
#else
#error "stm32l4 port: uart.name must be LPUART1"
#endif

#endif /* MT_FAMILY_H */
