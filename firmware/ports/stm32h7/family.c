/* STM32H7 family (STM32H743, RM0433): LDO supply, VOS1, HSI 64 MHz -> PLL1 -> 400 MHz,
 * domain prescalers (HCLK 200 MHz, APBs 100 MHz), flash wait states, Cortex-M7 I- and
 * D-cache on; the ST-LINK VCP on USART3 (PD8/PD9, AF7; "v2" USART: ISR/RDR/TDR).
 * Every wait on a hardware flag is bounded (mt_wait_reg); a failed step leaves the
 * core on HSI 64 MHz (the reset clock) and sets MT_PORT_FAIL_* bits. */
#include <stdint.h>

#include "mt_port_common.h"

#define PWR 0x58024800u
#define PWR_CSR1 (PWR + 0x04u)
#define PWR_CR3 (PWR + 0x0Cu)
#define PWR_D3CR (PWR + 0x18u)
#define CSR1_ACTVOSRDY (1u << 13)
#define CR3_BYPASS (1u << 0)
#define CR3_LDOEN (1u << 1)
#define CR3_SCUEN (1u << 2)
#define D3CR_VOSRDY (1u << 13)
#define D3CR_VOS_SHIFT 14u

#define RCC 0x58024400u
#define RCC_CR (RCC + 0x00u)
#define RCC_CFGR (RCC + 0x10u)
#define RCC_D1CFGR (RCC + 0x18u)
#define RCC_D2CFGR (RCC + 0x1Cu)
#define RCC_D3CFGR (RCC + 0x20u)
#define RCC_PLLCKSELR (RCC + 0x28u)
#define RCC_PLLCFGR (RCC + 0x2Cu)
#define RCC_PLL1DIVR (RCC + 0x30u)
#define RCC_AHB4ENR (RCC + 0xE0u)
#define RCC_APB1LENR (RCC + 0xE8u)
#define CR_HSIRDY (1u << 2)
#define CR_PLL1ON (1u << 24)
#define CR_PLL1RDY (1u << 25)
#define CFGR_SW_MASK 0x7u
#define CFGR_SW_PLL1 0x3u
#define CFGR_SWS_MASK (0x7u << 3)
#define CFGR_SWS_PLL1 (0x3u << 3)
#define APB1LENR_USART3EN (1u << 18)

#define FLASH_ACR 0x52002000u

#define USART3 0x40004800u
#define MT_UART_BASE USART3
#include "mt_usart_isr.h"

/* Cortex-M7 cache maintenance (ARMv7-M architecture manual, B3.2) */
#define SCB_CCR 0xE000ED14u
#define SCB_CCSIDR 0xE000ED80u
#define SCB_CSSELR 0xE000ED84u
#define SCB_ICIALLU 0xE000EF50u
#define SCB_DCISW 0xE000EF60u
#define CCR_DC (1u << 16)
#define CCR_IC (1u << 17)

void mt_family_gpio_clock(uint32_t port)
{
    MT_REG32(RCC_AHB4ENR) |= 1u << port;
    (void)MT_REG32(RCC_AHB4ENR);
}

static uint32_t mt_hpre(uint32_t div)
{
    return div <= 1u ? 0u : div == 2u ? 0x8u : div == 4u ? 0x9u : div == 8u ? 0xAu : 0xBu;
}

static uint32_t mt_ppre(uint32_t div)
{
    return div <= 1u ? 0u : div == 2u ? 0x4u : div == 4u ? 0x5u : div == 8u ? 0x6u : 0x7u;
}

static void mt_sync(void)
{
    __asm volatile("dsb\n\tisb" ::: "memory");
}

static void mt_caches_on(void)
{
#if MT_CLK_CACHES
    if (MT_REG32(SCB_CCR) & CCR_IC) {
        return; /* already on (a debugger reset keeps them) */
    }
    mt_sync();
    MT_REG32(SCB_ICIALLU) = 0;
    mt_sync();
    MT_REG32(SCB_CCR) |= CCR_IC;
    mt_sync();
    /* invalidate the D-cache by set/way before enabling it */
    MT_REG32(SCB_CSSELR) = 0; /* level 1 data cache */
    mt_sync();
    uint32_t ccsidr = MT_REG32(SCB_CCSIDR);
    uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    uint32_t line_shift = (ccsidr & 0x7u) + 4u;
    uint32_t way_shift = ways > 1u ? (uint32_t)__builtin_clz(ways - 1u) : 0u;
    for (uint32_t set = 0; set < sets; set++) {
        for (uint32_t way = 0; way < ways; way++) {
            MT_REG32(SCB_DCISW) = (set << line_shift) | (way << way_shift);
        }
    }
    mt_sync();
    MT_REG32(SCB_CCR) |= CCR_DC;
    mt_sync();
#endif
}

uint32_t mt_family_clock_init(uint32_t *core_hz, uint32_t *uart_hz)
{
    *core_hz = MT_CLK_RESET_HZ;
    *uart_hz = MT_CLK_RESET_HZ; /* all prescalers /1 after reset */
    mt_caches_on();

    /* supply: LDO (the Nucleo's default); written once after reset, then wait until the
     * regulator follows */
    MT_REG32(PWR_CR3) = (MT_REG32(PWR_CR3) & ~(CR3_SCUEN | CR3_BYPASS)) | CR3_LDOEN;
    if (!mt_wait_reg(PWR_CSR1, CSR1_ACTVOSRDY, CSR1_ACTVOSRDY)) {
        return MT_PORT_FAIL_VOLTAGE;
    }
    MT_REG32(PWR_D3CR) = (MT_REG32(PWR_D3CR) & ~(3u << D3CR_VOS_SHIFT)) | (MT_CLK_VOS << D3CR_VOS_SHIFT);
    if (!mt_wait_reg(PWR_D3CR, D3CR_VOSRDY, D3CR_VOSRDY)) {
        return MT_PORT_FAIL_VOLTAGE;
    }
    if (!mt_wait_reg(RCC_CR, CR_HSIRDY, CR_HSIRDY)) {
        return MT_PORT_FAIL_PLL;
    }
    /* PLL1: HSI / DIVM1 = MT_CLK_PLL_IN_HZ (range 2-4 MHz), wide VCO, x N, / P */
    uint32_t m = MT_CLK_HSI_HZ / MT_CLK_PLL_IN_HZ;
    MT_REG32(RCC_PLLCKSELR) = (MT_REG32(RCC_PLLCKSELR) & ~(0x3Fu << 4 | 0x3u)) | (m << 4); /* PLLSRC = HSI */
    uint32_t range = MT_CLK_PLL_IN_HZ >= 8000000u ? 3u : MT_CLK_PLL_IN_HZ >= 4000000u ? 2u : MT_CLK_PLL_IN_HZ >= 2000000u ? 1u : 0u;
    MT_REG32(RCC_PLLCFGR) = (MT_REG32(RCC_PLLCFGR) & ~0xFu) | (range << 2) | (1u << 16); /* DIVP1EN */
    MT_REG32(RCC_PLL1DIVR) = (MT_CLK_PLL_N - 1u) | ((MT_CLK_PLL_DIV - 1u) << 9) | ((MT_CLK_PLL_Q - 1u) << 16) |
                             (1u << 24);
    MT_REG32(RCC_CR) |= CR_PLL1ON;
    if (!mt_wait_reg(RCC_CR, CR_PLL1RDY, CR_PLL1RDY)) {
        MT_REG32(RCC_CR) &= ~CR_PLL1ON;
        return MT_PORT_FAIL_PLL;
    }
    /* flash: wait states and programming delay (WRHIGHFREQ: 0/1/2 for 0/1/>=2 wait
     * states at VOS1) for the AXI clock (HCLK) */
    uint32_t acr = MT_CLK_FLASH_WS | ((MT_CLK_FLASH_WS < 2u ? MT_CLK_FLASH_WS : 2u) << 4);
    MT_REG32(FLASH_ACR) = acr;
    if ((MT_REG32(FLASH_ACR) & 0x3Fu) != acr) {
        MT_REG32(RCC_CR) &= ~CR_PLL1ON;
        return MT_PORT_FAIL_FLASH;
    }
    /* CPU /1, HCLK = sysclk / AHB_DIV, every APB = HCLK / APB1_DIV */
    MT_REG32(RCC_D1CFGR) = mt_hpre(MT_CLK_AHB_DIV) | (mt_ppre(MT_CLK_APB1_DIV) << 4);
    MT_REG32(RCC_D2CFGR) = (mt_ppre(MT_CLK_APB1_DIV) << 4) | (mt_ppre(MT_CLK_APB2_DIV) << 8);
    MT_REG32(RCC_D3CFGR) = mt_ppre(MT_CLK_APB1_DIV) << 4;
    MT_REG32(RCC_CFGR) = (MT_REG32(RCC_CFGR) & ~CFGR_SW_MASK) | CFGR_SW_PLL1;
    if (!mt_wait_reg(RCC_CFGR, CFGR_SWS_MASK, CFGR_SWS_PLL1)) {
        MT_REG32(RCC_CFGR) &= ~CFGR_SW_MASK;
        MT_REG32(RCC_D1CFGR) = 0;
        MT_REG32(RCC_D2CFGR) = 0;
        MT_REG32(RCC_D3CFGR) = 0;
        MT_REG32(RCC_CR) &= ~CR_PLL1ON;
        return MT_PORT_FAIL_SWITCH;
    }
    *core_hz = MT_CLOCK_HZ;
    *uart_hz = MT_CLOCK_HZ / MT_CLK_AHB_DIV / MT_CLK_APB1_DIV; /* USART3 kernel clock = rcc_pclk1 */
    return 0;
}

void mt_family_uart_init(uint32_t uart_hz)
{
    MT_REG32(RCC_APB1LENR) |= APB1LENR_USART3EN;
    (void)MT_REG32(RCC_APB1LENR);
    mt_gpio_alternate(MT_UART_TX_PORT, MT_UART_TX_PIN, MT_UART_AF);
    mt_gpio_alternate(MT_UART_RX_PORT, MT_UART_RX_PIN, MT_UART_AF);
    MT_REG32(UART_CR1) = 0;
    MT_REG32(UART_BRR) = (uart_hz + MT_UART_BAUD / 2u) / MT_UART_BAUD; /* oversampling by 16 */
    MT_REG32(UART_CR1) = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE;
}

