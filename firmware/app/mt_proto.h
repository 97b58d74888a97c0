/* The device link protocol (docs/protocol.md). Mirrored by host/microtile/link/protocol.py.
 *
 * Frame on the wire: COBS(header | payload | crc32) 0x00
 *   header  = type u8, seq u8, length u16 LE (payload bytes)
 *   crc32   = zlib CRC-32 of header|payload, u32 LE
 * All multi-byte fields are little endian. */
#ifndef MT_PROTO_H
#define MT_PROTO_H

#define MT_PROTO_VERSION 1u
#define MT_LINK_MAX_PAYLOAD 512u
#define MT_FRAME_HEADER 4u
#define MT_FRAME_CRC 4u
#define MT_FRAME_MAX (MT_FRAME_HEADER + MT_LINK_MAX_PAYLOAD + MT_FRAME_CRC)
/* COBS adds one byte per 254 plus one */
#define MT_FRAME_MAX_ENCODED (MT_FRAME_MAX + MT_FRAME_MAX / 254u + 2u)

/* requests (host -> device); the reply has type | MT_REPLY */
#define MT_CMD_INFO 0x01u
#define MT_CMD_WRITE_INPUT 0x02u
#define MT_CMD_INVOKE 0x03u
#define MT_CMD_READ_OUTPUT 0x04u
#define MT_CMD_READ_COUNTERS 0x05u
#define MT_CMD_RESET 0x06u
#define MT_CMD_CALIBRATE 0x07u
#define MT_CMD_ECHO 0x08u
#define MT_REPLY 0x80u

/* device -> host, unsolicited or instead of a reply */
#define MT_FRAME_LOG 0x70u
#define MT_FRAME_ERROR 0x7Fu

/* ERROR frame codes */
#define MT_ERR_BAD_COBS 1u
#define MT_ERR_BAD_CRC 2u
#define MT_ERR_BAD_LENGTH 3u
#define MT_ERR_TOO_LONG 4u
#define MT_ERR_UNKNOWN_COMMAND 5u
#define MT_ERR_BAD_ARGUMENT 6u
#define MT_ERR_OUT_OF_RANGE 7u
#define MT_ERR_MODEL 8u
#define MT_ERR_FAULT 9u        /* seq 0, binary payload (docs/protocol.md), then a reset */
#define MT_ERR_RX_OVERFLOW 10u /* the receive ring was full: bytes were lost */
#define MT_ERR_COUNTER 11u     /* the counter does not advance (INVOKE, CALIBRATE) */

/* INVOKE count limit: a larger count gets BAD_ARGUMENT */
#define MT_INVOKE_MAX 10000u

/* FAULT payload (after code u16, command u8): layout version 1 */
#define MT_FAULT_LAYOUT 1u
#define MT_FAULT_NO_LAYER 0xFFFFu

#endif /* MT_PROTO_H */
