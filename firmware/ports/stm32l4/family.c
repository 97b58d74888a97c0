/* STM32L4+ family (STM32L4R5, RM0432): clock tree to 120 MHz (HSI16 -> PLL, voltage
 * range 1 boost, 5 flash wait states, ART prefetch and caches), GPIO clocks, and the
 * ST-LINK VCP on LPUART1 (PG7/PG8, which VDDIO2 powers: PWR_CR2.IOSV must be set).
 * The LPUART has the "v2" register layout (ISR/ICR/RDR/TDR) and BRR = 256 fck / baud.
 * Every wait on a hardware flag is bounded (mt_wait_reg); a failed step leaves the
 * core on MSI 4 MHz (the reset clock) and sets MT_PORT_FAIL_* bits. */
#include <stdint.h>

#include "mt_port_common.h"

#define RCC 0x40021000u
#define RCC_CR (RCC + 0x00u)
#define RCC_CFGR (RCC + 0x08u)
#define RCC_PLLCFGR (RCC + 0x0Cu)
#define RCC_AHB2ENR (RCC + 0x4Cu)
#define RCC_APB1ENR1 (RCC + 0x58u)
#define RCC_APB1ENR2 (RCC + 0x5Cu)
#define RCC_CCIPR (RCC + 0x88u)
#define CR_HSION (1u << 8)
#define CR_HSIRDY (1u << 10)
#define CR_PLLON (1u << 24)
#define CR_PLLRDY (1u << 25)
#define CFGR_SW_MASK 0x3u
#define CFGR_SW_PLL 0x3u
#define CFGR_SWS_MASK (0x3u << 2)
#define CFGR_SWS_PLL (0x3u << 2)
#define CFGR_HPRE_MASK (0xFu << 4)
#define PLLCFGR_SRC_HSI16 0x2u
#define PLLCFGR_PLLREN (1u << 24)
#define APB1ENR1_PWREN (1u << 28)
#define APB1ENR2_LPUART1EN (1u << 0)

#define PWR 0x40007000u
#define PWR_CR1 (PWR + 0x00u)
#define PWR_CR2 (PWR + 0x04u)
#define PWR_SR2 (PWR + 0x14u)
#define PWR_CR5 (PWR + 0x80u)
#define CR1_VOS_SHIFT 9u
#define CR2_IOSV (1u << 9)
#define SR2_VOSF (1u << 10)
#define CR5_R1MODE (1u << 8)

#define FLASH_ACR 0x40022000u
#define ACR_PRFTEN (1u << 8)
#define ACR_ICEN (1u << 9)
#define ACR_DCEN (1u << 10)

#define LPUART1 0x40008000u
#define MT_UART_BASE LPUART1
#include "mt_usart_isr.h"

void mt_family_gpio_clock(uint32_t port)
{
    MT_REG32(RCC_AHB2ENR) |= 1u << port;
    (void)MT_REG32(RCC_AHB2ENR);
}

static uint32_t mt_hpre(uint32_t div)
{
    return div <= 1u ? 0u : div == 2u ? 0x8u : div == 4u ? 0x9u : div == 8u ? 0xAu : 0xBu;
}

static uint32_t mt_ppre(uint32_t div)
{
    return div <= 1u ? 0u : div == 2u ? 0x4u : div == 4u ? 0x5u : div == 8u ? 0x6u : 0x7u;
}

static void mt_delay(uint32_t n)
{
    for (volatile uint32_t i = 0; i < n; i++) {
    }
}

static void mt_clock_back_to_msi(void)
{
    MT_REG32(RCC_CFGR) &= ~(CFGR_SW_MASK | 0x3FF0u); /* MSI, prescalers /1 */
    MT_REG32(RCC_CR) &= ~CR_PLLON;
    MT_REG32(PWR_CR5) |= CR5_R1MODE; /* range 1 normal */
}

uint32_t mt_family_clock_init(uint32_t *core_hz, uint32_t *uart_hz)
{
    *core_hz = MT_CLK_RESET_HZ;
    *uart_hz = MT_CLK_RESET_HZ;
    MT_REG32(RCC_APB1ENR1) |= APB1ENR1_PWREN;
    (void)MT_REG32(RCC_APB1ENR1);
    MT_REG32(PWR_CR2) |= CR2_IOSV; /* VDDIO2 valid: GPIOG (the VCP pins) works */
    MT_REG32(FLASH_ACR) |= ACR_PRFTEN | ACR_ICEN | ACR_DCEN;

    MT_REG32(PWR_CR1) = (MT_REG32(PWR_CR1) & ~(3u << CR1_VOS_SHIFT)) | (MT_CLK_VOS << CR1_VOS_SHIFT);
    if (!mt_wait_reg(PWR_SR2, SR2_VOSF, 0)) {
        return MT_PORT_FAIL_VOLTAGE;
    }
    MT_REG32(RCC_CR) |= CR_HSION;
    if (!mt_wait_reg(RCC_CR, CR_HSIRDY, CR_HSIRDY)) {
        return MT_PORT_FAIL_PLL;
    }
    /* HSI16 / M = MT_CLK_PLL_IN_HZ, x N, / R to SYSCLK */
    uint32_t m = MT_CLK_HSI_HZ / MT_CLK_PLL_IN_HZ;
    MT_REG32(RCC_PLLCFGR) = PLLCFGR_SRC_HSI16 | ((m - 1u) << 4) | (MT_CLK_PLL_N << 8) | PLLCFGR_PLLREN |
                            ((MT_CLK_PLL_DIV / 2u - 1u) << 25);
    MT_REG32(RCC_CR) |= CR_PLLON;
    if (!mt_wait_reg(RCC_CR, CR_PLLRDY, CR_PLLRDY)) {
        mt_clock_back_to_msi();
        return MT_PORT_FAIL_PLL;
    }
    MT_REG32(FLASH_ACR) = (MT_REG32(FLASH_ACR) & ~0xFu) | MT_CLK_FLASH_WS;
    if ((MT_REG32(FLASH_ACR) & 0xFu) != MT_CLK_FLASH_WS) {
        mt_clock_back_to_msi();
        return MT_PORT_FAIL_FLASH;
    }
#if MT_CLK_BOOST
    /* range 1 boost (RM0432 "Dynamic voltage scaling"): HCLK / 2 across the switch,
     * R1MODE = 0, switch, >= 1 us, then the final AHB prescaler */
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~CFGR_HPRE_MASK) | (0x8u << 4);
    MT_REG32(PWR_CR5) &= ~CR5_R1MODE;
#endif
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~(0x3Fu << 8)) | (mt_ppre(MT_CLK_APB1_DIV) << 8) |
                         (mt_ppre(MT_CLK_APB2_DIV) << 11);
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~CFGR_SW_MASK) | CFGR_SW_PLL;
    if (!mt_wait_reg(RCC_CFGR, CFGR_SWS_MASK, CFGR_SWS_PLL)) {
        mt_clock_back_to_msi();
        return MT_PORT_FAIL_SWITCH;
    }
    mt_delay(200u); /* >= 1 us at HCLK/2 */
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~CFGR_HPRE_MASK) | (mt_hpre(MT_CLK_AHB_DIV) << 4);
    *core_hz = MT_CLOCK_HZ;
    *uart_hz = MT_CLOCK_HZ / MT_CLK_AHB_DIV / MT_CLK_APB1_DIV; /* LPUART1 kernel clock = PCLK1 */
    return 0;
}

void mt_family_uart_init(uint32_t uart_hz)
{
    MT_REG32(RCC_APB1ENR2) |= APB1ENR2_LPUART1EN;
    (void)MT_REG32(RCC_APB1ENR2);
    MT_REG32(RCC_CCIPR) &= ~(3u << 10); /* LPUART1SEL = PCLK1 */
    mt_gpio_alternate(MT_UART_TX_PORT, MT_UART_TX_PIN, MT_UART_AF);
    mt_gpio_alternate(MT_UART_RX_PORT, MT_UART_RX_PIN, MT_UART_AF);
    MT_REG32(UART_CR1) = 0; /* BRR is writable only with UE = 0 */
    MT_REG32(UART_BRR) = (uint32_t)((256u * (uint64_t)uart_hz + MT_UART_BAUD / 2u) / MT_UART_BAUD);
    MT_REG32(UART_CR1) = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE;
}

