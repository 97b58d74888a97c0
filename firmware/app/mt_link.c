/* CRC-32, COBS and the frame receiver of the device link. */
#include "mt_link.h"

/* CRC-32 (reflected 0xEDB88320, as zlib), a nibble at a time: 64 bytes of table. */
static const uint32_t mt_crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t mt_crc32(uint32_t crc, const uint8_t *data, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ mt_crc_nibble[crc & 0xFu];
        crc = (crc >> 4) ^ mt_crc_nibble[crc & 0xFu];
    }
    return ~crc;
}

int32_t mt_cobs_decode(uint8_t *buf, size_t n)
{
    size_t in = 0, out = 0;
    while (in < n) {
        uint8_t code = buf[in++];
        if (code == 0) {
            return -1;
        }
        size_t run = (size_t)code - 1u;
        if (run > n - in) {
            return -1; /* block runs past the end: truncated */
        }
        for (size_t k = 0; k < run; k++) {
            uint8_t b = buf[in++];
            if (b == 0) {
                return -1;
            }
            buf[out++] = b;
        }
        /* a block shorter than 254 bytes ends in an implicit zero, except the last */
        if (code != 0xFFu && in < n) {
            buf[out++] = 0;
        }
    }
    return (int32_t)out;
}

void mt_cobs_write(const uint8_t *src, size_t n, void (*write)(const uint8_t *, size_t))
{
    size_t start = 0;
    for (;;) {
        size_t run = 0;
        while (start + run < n && run < 254u && src[start + run] != 0) {
            run++;
        }
        uint8_t code = (uint8_t)(run + 1u);
        write(&code, 1);
        if (run > 0) {
            write(src + start, run);
        }
        start += run;
        if (run == 254u) {
            if (start == n) {
                break;
            }
            continue; /* a full block has no implied zero */
        }
        if (start >= n) {
            break;
        }
        start++; /* skip the zero the code byte stands for */
    }
    static const uint8_t delimiter = 0;
    write(&delimiter, 1);
}

void mt_rx_reset(mt_rx *rx)
{
    rx->len = 0;
    rx->overflow = 0;
    rx->lost = 0;
}

void mt_rx_lost(mt_rx *rx)
{
    rx->lost = 1;
}

int mt_rx_feed(mt_rx *rx, uint8_t byte, size_t *frame_len, uint32_t *error, uint8_t *seq)
{
    *seq = 0;
    if (byte != 0) {
        if (rx->len < sizeof(rx->buf)) {
            rx->buf[rx->len++] = byte;
        } else {
            rx->overflow = 1;
        }
        return MT_RX_MORE;
    }
    /* delimiter: a frame (or garbage) is complete */
    size_t len = rx->len;
    int overflow = rx->overflow;
    int lost = rx->lost;
    mt_rx_reset(rx);
    if (lost) {
        *error = MT_ERR_RX_OVERFLOW;
        return MT_RX_ERROR;
    }
    if (overflow) {
        *error = MT_ERR_TOO_LONG;
        return MT_RX_ERROR;
    }
    if (len == 0) {
        return MT_RX_MORE; /* empty frame: the host's resynchronising 0x00 */
    }
    int32_t n = mt_cobs_decode(rx->buf, len);
    if (n < 0) {
        *error = MT_ERR_BAD_COBS;
        return MT_RX_ERROR;
    }
    if ((size_t)n < MT_FRAME_HEADER + MT_FRAME_CRC) {
        *error = MT_ERR_BAD_LENGTH;
        return MT_RX_ERROR;
    }
    size_t body = (size_t)n - MT_FRAME_CRC;
    if (mt_crc32(0, rx->buf, body) != mt_get_u32(rx->buf + body)) {
        *error = MT_ERR_BAD_CRC;
        return MT_RX_ERROR;
    }
    *seq = rx->buf[1];
    if (mt_get_u16(rx->buf + 2) != body - MT_FRAME_HEADER) {
        *error = MT_ERR_BAD_LENGTH;
        return MT_RX_ERROR;
    }
    /* COBS fits a few bytes more than MT_FRAME_MAX into the buffer: a payload over
     * the limit would be answered (ECHO) past the end of the transmit buffer */
    if (body - MT_FRAME_HEADER > MT_LINK_MAX_PAYLOAD) {
        *error = MT_ERR_TOO_LONG;
        return MT_RX_ERROR;
    }
    *frame_len = (size_t)n;
    return MT_RX_FRAME;
}
