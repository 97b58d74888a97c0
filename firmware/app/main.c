/* The device app: boot, then serve the framed binary link (docs/protocol.md):
 * write inputs into the arena, run the model layer by layer with the counter read
 * around each layer, read outputs and counters back. */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "mt_link.h"
#include "mt_model.h"
#include "mt_port.h"

#ifndef MT_ARENA_SIZE
#error "model.h must define MT_ARENA_SIZE"
#endif
#ifndef MT_BUILD_ID
#define MT_BUILD_ID "0"
#endif
#ifndef MT_BOARD_NAME
#define MT_BOARD_NAME "unknown"
#endif
/* Capacity of the per-layer counter table; model.h may set MT_NUM_LAYERS exactly. */
#ifndef MT_MAX_LAYERS
#ifdef MT_NUM_LAYERS
#define MT_MAX_LAYERS (MT_NUM_LAYERS > 0 ? MT_NUM_LAYERS : 1)
#else
#define MT_MAX_LAYERS 256
#endif
#endif

#define MT_STACK_PAINT 0x6D745354u /* "mtST" */

/* known-length code for calibration, mt_calib.S */
void mt_calib_loop(uint32_t n, uint8_t *arena);
void mt_noop_layer(uint32_t layer, uint8_t *arena);

static uint8_t mt_arena[MT_ARENA_SIZE > 0 ? MT_ARENA_SIZE : 1] __attribute__((aligned(16)));
static uint64_t mt_counts[MT_MAX_LAYERS];
static uint64_t mt_total;
static uint32_t mt_invokes;     /* N of the last INVOKE, 0 before the first */
static uint32_t mt_stack_used;  /* bytes, max over the last INVOKE */
static uint64_t mt_overhead;    /* counter units of measure(mt_noop_layer) */
static const char *mt_model_problem; /* non-NULL when the model cannot run */
static uint32_t mt_rx_overflows; /* times received bytes were lost (INFO) */
/* what runs, for a FAULT frame: the request being served, the layer (or none) */
static volatile uint8_t mt_current_cmd;
static volatile uint32_t mt_current_layer = MT_FAULT_NO_LAYER;

static mt_rx mt_link_rx;
static uint8_t mt_tx[MT_FRAME_MAX];

/* ---- frames out ---- */

static uint32_t mt_put_text(uint8_t *dst, uint32_t room, const char *text);

static void mt_send(uint8_t type, uint8_t seq, uint32_t len)
{
    if (len > MT_LINK_MAX_PAYLOAD) {
        /* never write the CRC past mt_tx: say what went wrong instead */
        uint8_t *p = mt_tx + MT_FRAME_HEADER;
        mt_put_u16(p, MT_ERR_TOO_LONG);
        p[2] = type & (uint8_t)~MT_REPLY;
        len = 3u + mt_put_text(p + 3, 64, "reply longer than the maximum payload");
        type = MT_FRAME_ERROR;
    }
    mt_tx[0] = type;
    mt_tx[1] = seq;
    mt_put_u16(mt_tx + 2, len);
    mt_put_u32(mt_tx + MT_FRAME_HEADER + len, mt_crc32(0, mt_tx, MT_FRAME_HEADER + len));
    mt_cobs_write(mt_tx, MT_FRAME_HEADER + len + MT_FRAME_CRC, mt_port_uart_write);
}

static uint8_t *mt_payload(void)
{
    return mt_tx + MT_FRAME_HEADER;
}

static uint32_t mt_put_text(uint8_t *dst, uint32_t room, const char *text)
{
    uint32_t n = 0;
    while (text[n] != '\0' && n < room) {
        dst[n] = (uint8_t)text[n];
        n++;
    }
    return n;
}

static void mt_send_error(uint8_t seq, uint32_t code, uint8_t cmd, const char *msg)
{
    uint8_t *p = mt_payload();
    mt_put_u16(p, code);
    p[2] = cmd;
    mt_send(MT_FRAME_ERROR, seq, 3u + mt_put_text(p + 3, MT_LINK_MAX_PAYLOAD - 3u, msg));
}

static void mt_send_log(const char *a, const char *b)
{
    uint8_t *p = mt_payload();
    uint32_t n = mt_put_text(p, MT_LINK_MAX_PAYLOAD, a);
    n += mt_put_text(p + n, MT_LINK_MAX_PAYLOAD - n, b);
    mt_send(MT_FRAME_LOG, 0, n);
}

/* ---- model checks, measurement ---- */

static const char *mt_check_model(void)
{
    const mt_model *m = &mt_model_def;
    if (m->arena_size > MT_ARENA_SIZE) {
        return "model needs a larger arena than MT_ARENA_SIZE";
    }
    if (m->num_layers > MT_MAX_LAYERS) {
        return "model has more layers than MT_MAX_LAYERS counters";
    }
    for (uint32_t i = 0; i < m->num_inputs; i++) {
        if (m->inputs[i].offset > MT_ARENA_SIZE || m->inputs[i].size > MT_ARENA_SIZE - m->inputs[i].offset) {
            return "model input lies outside the arena";
        }
    }
    for (uint32_t i = 0; i < m->num_outputs; i++) {
        if (m->outputs[i].offset > MT_ARENA_SIZE || m->outputs[i].size > MT_ARENA_SIZE - m->outputs[i].offset) {
            return "model output lies outside the arena";
        }
    }
    return 0;
}

/* Raw counter difference around one call. Every measurement goes through this one
 * function, so the instructions around the call are the same each time and
 * measuring mt_noop_layer gives the overhead to subtract. */
static __attribute__((noinline)) uint64_t mt_measure(void (*fn)(uint32_t, uint8_t *), uint32_t arg)
{
    uint64_t t0 = mt_port_counter_read();
    fn(arg, mt_arena);
    uint64_t t1 = mt_port_counter_read();
    return mt_port_counter_delta(t0, t1);
}

static uint64_t mt_measure_net(void (*fn)(uint32_t, uint8_t *), uint32_t arg)
{
    uint64_t n = mt_measure(fn, arg);
    return n > mt_overhead ? n - mt_overhead : 0;
}

/* The overhead of a measurement, warm: the first runs fill caches and the flash
 * accelerator, so take the minimum of several after a few warm-up runs. (On QEMU
 * every run gives the same count.) */
static void mt_measure_overhead(void)
{
    uint64_t best = ~(uint64_t)0;
    for (int i = 0; i < 12; i++) {
        uint64_t n = mt_measure(mt_noop_layer, 0);
        if (i >= 4 && n < best) {
            best = n;
        }
    }
    mt_overhead = best;
}

/* Before INVOKE and CALIBRATE: the counter on again (a debugger may have stopped it
 * since boot), checked to advance, and the overhead measured afresh. 0 (and an
 * ERROR frame sent) when it stands still. */
static int mt_counter_ready(uint8_t seq, uint8_t cmd)
{
    mt_port_counter_start();
    if (mt_port_counter_unit() != MT_COUNTER_UNIT_NONE && mt_measure(mt_calib_loop, 64) == 0) {
        mt_send_error(seq, MT_ERR_COUNTER, cmd, "the counter does not advance (DWT stopped by a debugger?)");
        return 0;
    }
    mt_measure_overhead();
    return 1;
}

static __attribute__((noinline)) void mt_paint_stack(void)
{
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    uint32_t *p = (uint32_t *)(void *)mt_port_stack_bottom();
    uint32_t *end = (uint32_t *)(uintptr_t)((sp - 256u) & ~3u);
    while (p < end) {
        *p++ = MT_STACK_PAINT;
    }
}

static uint32_t mt_stack_high_water(void)
{
    const uint32_t *p = (const uint32_t *)(void *)mt_port_stack_bottom();
    const uint32_t *top = (const uint32_t *)(void *)mt_port_stack_top();
    while (p < top && *p == MT_STACK_PAINT) {
        p++;
    }
    return (uint32_t)((const uint8_t *)top - (const uint8_t *)p);
}

/* ---- commands ---- */

static void mt_cmd_info(uint8_t seq)
{
    const mt_model *m = &mt_model_def;
    uint8_t *p = mt_payload();
    uint32_t need = 32u + 4u * ((uint32_t)m->num_inputs + m->num_outputs) + 3u * 64u;
    if (need > MT_LINK_MAX_PAYLOAD) {
        mt_send_error(seq, MT_ERR_MODEL, MT_CMD_INFO, "too many model inputs/outputs for one INFO frame");
        return;
    }
    p[0] = MT_PROTO_VERSION;
    p[1] = (uint8_t)mt_port_counter_unit();
    mt_put_u16(p + 2, MT_LINK_MAX_PAYLOAD);
    mt_put_u32(p + 4, mt_port_clock_hz());
    mt_put_u32(p + 8, m->hash);
    mt_put_u32(p + 12, MT_ARENA_SIZE);
    mt_put_u32(p + 16, (uint32_t)(mt_port_stack_top() - mt_port_stack_bottom()));
    mt_put_u16(p + 20, m->num_inputs);
    mt_put_u16(p + 22, m->num_outputs);
    mt_put_u16(p + 24, m->num_layers);
    mt_put_u16(p + 26, MT_MAX_LAYERS);
    mt_put_u32(p + 28, m->arena_size);
    uint32_t n = 32;
    for (uint32_t i = 0; i < m->num_inputs; i++, n += 4) {
        mt_put_u32(p + n, m->inputs[i].size);
    }
    for (uint32_t i = 0; i < m->num_outputs; i++, n += 4) {
        mt_put_u32(p + n, m->outputs[i].size);
    }
    const char *strings[3] = {MT_BUILD_ID, m->name ? m->name : "", MT_BOARD_NAME};
    for (int s = 0; s < 3; s++) {
        uint32_t len = mt_put_text(p + n + 1, 63, strings[s]);
        p[n] = (uint8_t)len;
        n += 1u + len;
    }
    /* appended in protocol v1 (older hosts ignore it), when it fits: the port's boot
     * status bits and their text */
    if (n + 5u <= MT_LINK_MAX_PAYLOAD) {
        mt_put_u32(p + n, mt_port_status());
        n += 4u;
        uint32_t room = MT_LINK_MAX_PAYLOAD - n - 1u;
        uint32_t len = mt_put_text(p + n + 1, room < 255u ? room : 255u, mt_port_status_text());
        p[n] = (uint8_t)len;
        n += 1u + len;
        /* appended after the status, when it fits: receive overflows since boot and
         * the largest INVOKE count */
        if (n + 8u <= MT_LINK_MAX_PAYLOAD) {
            mt_put_u32(p + n, mt_rx_overflows);
            mt_put_u32(p + n + 4u, MT_INVOKE_MAX);
            n += 8u;
        }
    }
    mt_send(MT_CMD_INFO | MT_REPLY, seq, n);
}

/* io: 1 = input, 0 = output. Checks the index and [offset, offset + len). */
static uint8_t *mt_io_span(uint8_t seq, uint8_t cmd, int io, uint32_t index, uint32_t offset, uint32_t len)
{
    const mt_model *m = &mt_model_def;
    if (mt_model_problem) {
        mt_send_error(seq, MT_ERR_MODEL, cmd, mt_model_problem);
        return 0;
    }
    uint32_t count = io ? m->num_inputs : m->num_outputs;
    if (index >= count) {
        mt_send_error(seq, MT_ERR_OUT_OF_RANGE, cmd, io ? "input index out of range" : "output index out of range");
        return 0;
    }
    const mt_buffer *b = io ? &m->inputs[index] : &m->outputs[index];
    if (offset > b->size || len > b->size - offset) {
        mt_send_error(seq, MT_ERR_OUT_OF_RANGE, cmd, "offset + length past the end of the tensor");
        return 0;
    }
    return mt_arena + b->offset + offset;
}

static void mt_cmd_write_input(uint8_t seq, const uint8_t *a, uint32_t n)
{
    if (n < 6) {
        mt_send_error(seq, MT_ERR_BAD_ARGUMENT, MT_CMD_WRITE_INPUT, "WRITE_INPUT needs index u16, offset u32, data");
        return;
    }
    uint8_t *dst = mt_io_span(seq, MT_CMD_WRITE_INPUT, 1, mt_get_u16(a), mt_get_u32(a + 2), n - 6u);
    if (dst) {
        memcpy(dst, a + 6, n - 6u);
        mt_send(MT_CMD_WRITE_INPUT | MT_REPLY, seq, 0);
    }
}

static void mt_cmd_read_output(uint8_t seq, const uint8_t *a, uint32_t n)
{
    if (n != 8) {
        mt_send_error(seq, MT_ERR_BAD_ARGUMENT, MT_CMD_READ_OUTPUT, "READ_OUTPUT needs index u16, offset u32, length u16");
        return;
    }
    uint32_t len = mt_get_u16(a + 6);
    if (len > MT_LINK_MAX_PAYLOAD) {
        mt_send_error(seq, MT_ERR_BAD_ARGUMENT, MT_CMD_READ_OUTPUT, "READ_OUTPUT length above the maximum payload");
        return;
    }
    const uint8_t *src = mt_io_span(seq, MT_CMD_READ_OUTPUT, 0, mt_get_u16(a), mt_get_u32(a + 2), len);
    if (src) {
        memcpy(mt_payload(), src, len);
        mt_send(MT_CMD_READ_OUTPUT | MT_REPLY, seq, len);
    }
}

static void mt_link_byte(uint8_t byte, int got);

static void mt_cmd_invoke(uint8_t seq, const uint8_t *a, uint32_t n)
{
    const mt_model *m = &mt_model_def;
    if (n != 4 || mt_get_u32(a) == 0 || mt_get_u32(a) > MT_INVOKE_MAX) {
        mt_send_error(seq, MT_ERR_BAD_ARGUMENT, MT_CMD_INVOKE, "INVOKE needs a count u32 in 1..10000");
        return;
    }
    if (mt_model_problem) {
        mt_send_error(seq, MT_ERR_MODEL, MT_CMD_INVOKE, mt_model_problem);
        return;
    }
    uint32_t count = mt_get_u32(a);
    if (!mt_counter_ready(seq, MT_CMD_INVOKE)) {
        return;
    }
    mt_paint_stack();
    mt_port_trigger_set();
    uint32_t done = 0;
    while (done < count) {
        for (uint32_t l = 0; l < m->num_layers; l++) {
            mt_current_layer = l;
            mt_counts[l] = mt_measure_net(m->run_layer, l);
        }
        mt_current_layer = MT_FAULT_NO_LAYER;
        done++;
        /* Between two runs (never inside one): a byte from the host stops the loop, so
         * a long INVOKE still hears RESET. The byte goes to the frame receiver as
         * usual; the receiver was reset at the INVOKE frame's delimiter, so one byte
         * cannot complete a frame here (at most an RX_OVERFLOW error goes out). */
        uint8_t byte;
        int got;
        if (done < count && (got = mt_port_uart_read(&byte, 0)) != 0) {
            mt_link_byte(byte, got);
            break;
        }
    }
    mt_port_trigger_clear();
    mt_stack_used = mt_stack_high_water();
    mt_invokes = done;
    mt_total = 0;
    for (uint32_t l = 0; l < m->num_layers; l++) {
        mt_total += mt_counts[l];
    }
    uint8_t *p = mt_payload();
    mt_put_u32(p, done);
    mt_put_u64(p + 4, mt_total);
    mt_send(MT_CMD_INVOKE | MT_REPLY, seq, 12);
}

#define MT_COUNTERS_HEAD 24u
#define MT_COUNTERS_PER_FRAME ((MT_LINK_MAX_PAYLOAD - MT_COUNTERS_HEAD) / 8u)

static void mt_cmd_read_counters(uint8_t seq, const uint8_t *a, uint32_t n)
{
    const mt_model *m = &mt_model_def;
    if (n != 0 && n != 2) {
        mt_send_error(seq, MT_ERR_BAD_ARGUMENT, MT_CMD_READ_COUNTERS, "READ_COUNTERS takes an optional first layer u16");
        return;
    }
    uint32_t first = n == 2 ? mt_get_u16(a) : 0u;
    uint32_t layers = m->num_layers <= MT_MAX_LAYERS ? m->num_layers : 0u;
    if (first > layers) {
        mt_send_error(seq, MT_ERR_OUT_OF_RANGE, MT_CMD_READ_COUNTERS, "first layer past the last layer");
        return;
    }
    uint32_t count = layers - first;
    if (count > MT_COUNTERS_PER_FRAME) {
        count = MT_COUNTERS_PER_FRAME;
    }
    uint8_t *p = mt_payload();
    p[0] = (uint8_t)mt_port_counter_unit();
    p[1] = 0;
    mt_put_u16(p + 2, layers);
    mt_put_u16(p + 4, first);
    mt_put_u16(p + 6, count);
    mt_put_u32(p + 8, mt_invokes);
    mt_put_u32(p + 12, mt_stack_used);
    mt_put_u64(p + 16, mt_total);
    for (uint32_t i = 0; i < count; i++) {
        mt_put_u64(p + MT_COUNTERS_HEAD + 8u * i, mt_invokes ? mt_counts[first + i] : 0u);
    }
    mt_send(MT_CMD_READ_COUNTERS | MT_REPLY, seq, MT_COUNTERS_HEAD + 8u * count);
}

static void mt_cmd_calibrate(uint8_t seq, const uint8_t *a, uint32_t n)
{
    uint32_t iters = n == 4 ? mt_get_u32(a) : 0u;
    if (iters == 0 || iters > 0x40000000u) {
        mt_send_error(seq, MT_ERR_BAD_ARGUMENT, MT_CMD_CALIBRATE, "CALIBRATE needs iterations u32 in 1..2^30");
        return;
    }
    if (!mt_counter_ready(seq, MT_CMD_CALIBRATE)) {
        return;
    }
    uint64_t measured = mt_measure_net(mt_calib_loop, iters);
    uint8_t *p = mt_payload();
    mt_put_u64(p, measured);
    mt_put_u32(p + 8, (uint32_t)mt_overhead);
    mt_send(MT_CMD_CALIBRATE | MT_REPLY, seq, 12);
}

static void mt_handle_frame(const uint8_t *f)
{
    uint8_t type = f[0];
    uint8_t seq = f[1];
    uint32_t n = mt_get_u16(f + 2);
    const uint8_t *a = f + MT_FRAME_HEADER;
    mt_current_cmd = type;
    switch (type) {
    case MT_CMD_INFO:
        mt_cmd_info(seq);
        break;
    case MT_CMD_WRITE_INPUT:
        mt_cmd_write_input(seq, a, n);
        break;
    case MT_CMD_INVOKE:
        mt_cmd_invoke(seq, a, n);
        break;
    case MT_CMD_READ_OUTPUT:
        mt_cmd_read_output(seq, a, n);
        break;
    case MT_CMD_READ_COUNTERS:
        mt_cmd_read_counters(seq, a, n);
        break;
    case MT_CMD_CALIBRATE:
        mt_cmd_calibrate(seq, a, n);
        break;
    case MT_CMD_ECHO:
        memmove(mt_payload(), a, n);
        mt_send(MT_CMD_ECHO | MT_REPLY, seq, n);
        break;
    case MT_CMD_RESET:
        mt_send(MT_CMD_RESET | MT_REPLY, seq, 0);
        mt_port_uart_flush();
        mt_port_reset();
    default:
        mt_send_error(seq, MT_ERR_UNKNOWN_COMMAND, type, "unknown command");
        break;
    }
    mt_current_cmd = 0;
}

static const char *mt_rx_error_text(uint32_t code)
{
    switch (code) {
    case MT_ERR_BAD_COBS:
        return "bad COBS encoding";
    case MT_ERR_BAD_CRC:
        return "bad CRC";
    case MT_ERR_BAD_LENGTH:
        return "bad length: frame too short or length field does not match";
    case MT_ERR_TOO_LONG:
        return "frame longer than the maximum payload";
    case MT_ERR_RX_OVERFLOW:
        return "receive buffer overflow: bytes were lost; send one request at a time";
    default:
        return "bad frame";
    }
}

/* One received byte (got: mt_port_uart_read's result) into the frame receiver. At a
 * loss the port hands a 0x00: the frame in progress ends with RX_OVERFLOW. */
static void mt_link_byte(uint8_t byte, int got)
{
    if (got == MT_PORT_RX_LOST) {
        mt_rx_overflows++;
        mt_rx_lost(&mt_link_rx);
    }
    size_t len = 0;
    uint32_t err = 0;
    uint8_t seq = 0;
    int r = mt_rx_feed(&mt_link_rx, byte, &len, &err, &seq);
    if (r == MT_RX_FRAME) {
        mt_handle_frame(mt_link_rx.buf);
    } else if (r == MT_RX_ERROR) {
        mt_send_error(seq, err, 0, mt_rx_error_text(err));
    }
}

/* The FAULT frame (docs/protocol.md): binary, seq 0, then a reset. Runs on the fault
 * handler's fresh stack and touches only static data. */
void mt_app_fault(const mt_fault *f)
{
    static const uint8_t delimiter = 0;
    mt_port_uart_write(&delimiter, 1); /* ends a frame the fault cut short */
    uint8_t *p = mt_payload();
    mt_put_u16(p, MT_ERR_FAULT);
    p[2] = mt_current_cmd;
    p[3] = MT_FAULT_LAYOUT;
    mt_put_u16(p + 4, f->exception);
    mt_put_u16(p + 6, mt_current_layer);
    mt_put_u32(p + 8, f->pc);
    mt_put_u32(p + 12, f->lr);
    mt_put_u32(p + 16, f->cfsr);
    mt_put_u32(p + 20, f->hfsr);
    mt_put_u32(p + 24, f->mmfar);
    mt_put_u32(p + 28, f->bfar);
    p[32] = (uint8_t)f->flags;
    mt_send(MT_FRAME_ERROR, 0, 33u + mt_put_text(p + 33, 32, "cpu fault"));
    mt_port_uart_flush();
    mt_port_reset();
}

int main(void)
{
    mt_port_init();
    mt_model_problem = mt_check_model();
    mt_measure_overhead();
    mt_rx_reset(&mt_link_rx);
    mt_send_log("microtile ready, build " MT_BUILD_ID ", board " MT_BOARD_NAME ", model ",
                mt_model_def.name ? mt_model_def.name : "?");
    if (mt_model_problem) {
        mt_send_log("model problem: ", mt_model_problem);
    }
    if (mt_port_status() != 0) {
        mt_send_log("port: ", mt_port_status_text());
    }
    for (;;) {
        uint8_t byte;
        int got = mt_port_uart_read(&byte, 1000);
        if (got) {
            mt_link_byte(byte, got);
        }
    }
}
