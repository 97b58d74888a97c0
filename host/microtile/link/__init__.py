"""Link: the framed UART protocol between host and device (docs/protocol.md)."""
