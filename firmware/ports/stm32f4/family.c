/* STM32F4 family: clock tree (HSE bypass or HSI -> PLL, voltage scale, over-drive,
 * flash wait states and ART accelerator), GPIO clocks, USART2/USART3 (the "v1" USART
 * with SR/DR). Register maps: RM0090 (F405/F429), RM0390 (F446), RM0368/RM0383
 * (F401/F411); the bits used here are the same on all of them.
 *
 * Every wait on a hardware flag is bounded (mt_wait_reg). On QEMU's netduinoplus2,
 * which models no RCC, PWR or flash interface, the waits time out, the core stays on
 * the reset clock (HSI) and the failure bits go to INFO and the boot LOG. */
#include <stdint.h>

#include "mt_port_common.h"

#define RCC 0x40023800u
#define RCC_CR (RCC + 0x00u)
#define RCC_PLLCFGR (RCC + 0x04u)
#define RCC_CFGR (RCC + 0x08u)
#define RCC_AHB1ENR (RCC + 0x30u)
#define RCC_APB1ENR (RCC + 0x40u)
#define CR_HSEON (1u << 16)
#define CR_HSERDY (1u << 17)
#define CR_HSEBYP (1u << 18)
#define CR_PLLON (1u << 24)
#define CR_PLLRDY (1u << 25)
#define CFGR_SW_MASK 0x3u
#define CFGR_SW_PLL 0x2u
#define CFGR_SWS_MASK (0x3u << 2)
#define CFGR_SWS_PLL (0x2u << 2)
#define APB1ENR_USART2 (1u << 17)
#define APB1ENR_USART3 (1u << 18)
#define APB1ENR_PWR (1u << 28)

#define PWR 0x40007000u
#define PWR_CR (PWR + 0x00u)
#define PWR_CSR (PWR + 0x04u)
#define PWR_CR_VOS_SHIFT 14u
#define PWR_CR_ODEN (1u << 16)
#define PWR_CR_ODSWEN (1u << 17)
#define PWR_CSR_VOSRDY (1u << 14)
#define PWR_CSR_ODRDY (1u << 16)
#define PWR_CSR_ODSWRDY (1u << 17)

#define FLASH_ACR 0x40023C00u
#define ACR_PRFTEN (1u << 8)
#define ACR_ICEN (1u << 9)
#define ACR_DCEN (1u << 10)

#if defined(MT_UART_USART2)
#define UART_BASE 0x40004400u
#define UART_APB1ENR APB1ENR_USART2
#else
#define UART_BASE 0x40004800u
#define UART_APB1ENR APB1ENR_USART3
#endif
#define USART_SR (UART_BASE + 0x00u)
#define USART_DR (UART_BASE + 0x04u)
#define USART_BRR (UART_BASE + 0x08u)
#define USART_CR1 (UART_BASE + 0x0Cu)
#define SR_ORE (1u << 3)
#define SR_RXNE (1u << 5)
#define SR_TC (1u << 6)
#define SR_TXE (1u << 7)
#define CR1_RE (1u << 2)
#define CR1_TE (1u << 3)
#define CR1_RXNEIE (1u << 5)
#define CR1_UE (1u << 13)

void mt_family_gpio_clock(uint32_t port)
{
    MT_REG32(RCC_AHB1ENR) |= 1u << port;
    (void)MT_REG32(RCC_AHB1ENR); /* a read-back gives the clock time to start */
}

#ifndef MT_CLK_SOURCE_NONE
/* AHB prescaler field (HPRE) and APB prescaler fields (PPRE1/2) for a divider */
static uint32_t mt_hpre(uint32_t div)
{
    return div <= 1u ? 0u : div == 2u ? 0x8u : div == 4u ? 0x9u : div == 8u ? 0xAu : 0xBu;
}

static uint32_t mt_ppre(uint32_t div)
{
    return div <= 1u ? 0u : div == 2u ? 0x4u : div == 4u ? 0x5u : div == 8u ? 0x6u : 0x7u;
}

/* Back to the reset clock (HSI) after a failed step: PLL off, over-drive off. */
static void mt_clock_back_to_hsi(void)
{
    MT_REG32(RCC_CFGR) &= ~CFGR_SW_MASK;
    MT_REG32(RCC_CR) &= ~CR_PLLON;
    MT_REG32(PWR_CR) &= ~(PWR_CR_ODEN | PWR_CR_ODSWEN);
}
#endif

uint32_t mt_family_clock_init(uint32_t *core_hz, uint32_t *uart_hz)
{
#ifdef MT_CLK_SOURCE_NONE
    /* emulated board: QEMU runs the core at MT_CLOCK_HZ whatever RCC says */
    *core_hz = MT_CLOCK_HZ;
    *uart_hz = MT_CLOCK_HZ / 4u;
    return 0;
#else
    uint32_t fail = 0;
    uint32_t use_hse = 0;
    /* ART accelerator (prefetch, instruction and data caches) at any clock */
    MT_REG32(FLASH_ACR) |= ACR_PRFTEN | ACR_ICEN | ACR_DCEN;
    *core_hz = MT_CLK_RESET_HZ;
    *uart_hz = MT_CLK_RESET_HZ; /* prescalers are /1 after reset */

#ifdef MT_CLK_SOURCE_HSE_BYPASS
    /* 8 MHz from the ST-LINK's MCO on OSC_IN: an external clock, so HSE bypass */
    MT_REG32(RCC_CR) |= CR_HSEBYP;
    MT_REG32(RCC_CR) |= CR_HSEON;
    if (mt_wait_reg(RCC_CR, CR_HSERDY, CR_HSERDY)) {
        use_hse = 1;
    } else {
        fail |= MT_PORT_FAIL_HSE; /* the solder bridges may not route MCO: use HSI */
        MT_REG32(RCC_CR) &= ~(CR_HSEON | CR_HSEBYP);
    }
#endif
    uint32_t src_hz = use_hse ? MT_CLK_HSE_HZ : MT_CLK_HSI_HZ;

    /* voltage scale (changeable only while the PLL is off) */
    MT_REG32(RCC_APB1ENR) |= APB1ENR_PWR;
    (void)MT_REG32(RCC_APB1ENR);
    MT_REG32(PWR_CR) = (MT_REG32(PWR_CR) & ~(3u << PWR_CR_VOS_SHIFT)) | (MT_CLK_VOS << PWR_CR_VOS_SHIFT);

    /* PLL: src / M = MT_CLK_PLL_IN_HZ, x N, / P to SYSCLK, / Q (48 MHz domain) */
    uint32_t m = src_hz / MT_CLK_PLL_IN_HZ;
    uint32_t keep = MT_REG32(RCC_PLLCFGR) & 0xF0000000u; /* PLLR on the F446 */
    MT_REG32(RCC_PLLCFGR) = keep | m | (MT_CLK_PLL_N << 6) | ((MT_CLK_PLL_DIV / 2u - 1u) << 16) |
                            (use_hse << 22) | (MT_CLK_PLL_Q << 24);
    MT_REG32(RCC_CR) |= CR_PLLON;
    if (!mt_wait_reg(RCC_CR, CR_PLLRDY, CR_PLLRDY)) {
        mt_clock_back_to_hsi();
        return fail | MT_PORT_FAIL_PLL;
    }
#if MT_CLK_OVERDRIVE
    /* above 168 MHz (F42x/F43x/F446): over-drive on, then switch the regulator to it */
    MT_REG32(PWR_CR) |= PWR_CR_ODEN;
    if (!mt_wait_reg(PWR_CSR, PWR_CSR_ODRDY, PWR_CSR_ODRDY)) {
        mt_clock_back_to_hsi();
        return fail | MT_PORT_FAIL_OVERDRIVE;
    }
    MT_REG32(PWR_CR) |= PWR_CR_ODSWEN;
    if (!mt_wait_reg(PWR_CSR, PWR_CSR_ODSWRDY, PWR_CSR_ODSWRDY)) {
        mt_clock_back_to_hsi();
        return fail | MT_PORT_FAIL_OVERDRIVE;
    }
#endif
    if (!mt_wait_reg(PWR_CSR, PWR_CSR_VOSRDY, PWR_CSR_VOSRDY)) {
        mt_clock_back_to_hsi();
        return fail | MT_PORT_FAIL_VOLTAGE;
    }
    /* wait states before the clock goes up; the ACR read-back confirms them */
    MT_REG32(FLASH_ACR) = (MT_REG32(FLASH_ACR) & ~0xFu) | MT_CLK_FLASH_WS;
    if ((MT_REG32(FLASH_ACR) & 0xFu) != MT_CLK_FLASH_WS) {
        mt_clock_back_to_hsi();
        return fail | MT_PORT_FAIL_FLASH;
    }
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~0xFCF0u) | (mt_hpre(MT_CLK_AHB_DIV) << 4) |
                         (mt_ppre(MT_CLK_APB1_DIV) << 10) | (mt_ppre(MT_CLK_APB2_DIV) << 13);
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~CFGR_SW_MASK) | CFGR_SW_PLL;
    if (!mt_wait_reg(RCC_CFGR, CFGR_SWS_MASK, CFGR_SWS_PLL)) {
        MT_REG32(RCC_CFGR) &= ~0xFCF0u; /* prescalers back to /1 for HSI */
        mt_clock_back_to_hsi();
        return fail | MT_PORT_FAIL_SWITCH;
    }
    *core_hz = MT_CLOCK_HZ;
    *uart_hz = MT_CLOCK_HZ / MT_CLK_AHB_DIV / MT_CLK_APB1_DIV;
    return fail;
#endif
}

void mt_family_uart_init(uint32_t uart_hz)
{
    MT_REG32(RCC_APB1ENR) |= UART_APB1ENR;
    (void)MT_REG32(RCC_APB1ENR);
#ifdef MT_UART_AF
    mt_gpio_alternate(MT_UART_TX_PORT, MT_UART_TX_PIN, MT_UART_AF);
    mt_gpio_alternate(MT_UART_RX_PORT, MT_UART_RX_PIN, MT_UART_AF);
#endif
    /* oversampling by 16: BRR = mantissa.fraction(4 bits) = fck / baud, rounded */
    MT_REG32(USART_BRR) = (uart_hz + MT_UART_BAUD / 2u) / MT_UART_BAUD;
    MT_REG32(USART_CR1) = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE;
}

int mt_family_uart_putc(uint8_t byte)
{
    if (!mt_wait_reg(USART_SR, SR_TXE, SR_TXE)) {
        return 0;
    }
    MT_REG32(USART_DR) = byte;
    return 1;
}

int mt_family_uart_idle(void)
{
    return (MT_REG32(USART_SR) & SR_TC) != 0;
}

void mt_family_uart_irq(void)
{
    uint32_t sr = MT_REG32(USART_SR);
    if (sr & (SR_RXNE | SR_ORE)) {
        uint8_t b = (uint8_t)MT_REG32(USART_DR); /* clears RXNE (and ORE after the SR read) */
        if (sr & SR_RXNE) {
            mt_port_rx_push(b);
        }
        if (sr & SR_ORE) {
            mt_port_rx_lost(); /* an overrun lost the bytes after b */
        }
    }
}
