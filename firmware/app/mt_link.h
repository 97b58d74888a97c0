/* Framing for the device link: CRC-32, COBS and a byte-at-a-time frame receiver.
 * Portable C (no port calls) so the host can compile and test it too. */
#ifndef MT_LINK_H
#define MT_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "mt_proto.h"

/* zlib-compatible CRC-32; pass crc = 0 for a fresh checksum, or a previous result to
 * continue over more data. */
uint32_t mt_crc32(uint32_t crc, const uint8_t *data, size_t n);

/* Decode COBS in place (a frame without its 0x00 delimiter). Returns the decoded
 * length, or -1 when the data is not valid COBS. */
int32_t mt_cobs_decode(uint8_t *buf, size_t n);

/* COBS-encode src and pass the encoded bytes, followed by the 0x00 delimiter, to
 * write() (in pieces; no second buffer needed). */
void mt_cobs_write(const uint8_t *src, size_t n, void (*write)(const uint8_t *, size_t));

/* Frame receiver: feed bytes one by one. */
typedef struct {
    uint8_t buf[MT_FRAME_MAX_ENCODED];
    size_t len;
    int overflow; /* the frame in progress is longer than the buffer */
    int lost;     /* bytes of the frame in progress were lost (receive ring full) */
} mt_rx;

enum {
    MT_RX_MORE = 0,      /* keep feeding */
    MT_RX_FRAME = 1,     /* a complete, checked frame is in rx->buf[0 .. frame_len) */
    MT_RX_ERROR = 2      /* a bad frame; *error holds its MT_ERR_ code */
};

void mt_rx_reset(mt_rx *rx);

/* Bytes of the frame in progress were lost (the port's receive ring overflowed): it
 * is dropped, and its delimiter gives MT_ERR_RX_OVERFLOW. */
void mt_rx_lost(mt_rx *rx);

/* Returns MT_RX_*. On MT_RX_FRAME, *frame_len is header + payload + crc bytes and the
 * CRC, the length field and the payload limit (MT_LINK_MAX_PAYLOAD) have been
 * checked. On MT_RX_ERROR, *error is an MT_ERR_ code
 * and *seq the frame's sequence number when its header was readable (else 0). */
int mt_rx_feed(mt_rx *rx, uint8_t byte, size_t *frame_len, uint32_t *error, uint8_t *seq);

static inline void mt_put_u16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void mt_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void mt_put_u64(uint8_t *p, uint64_t v)
{
    mt_put_u32(p, (uint32_t)v);
    mt_put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t mt_get_u16(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

static inline uint32_t mt_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

#endif /* MT_LINK_H */
