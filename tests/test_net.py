import socket

from irene.net import PORT_RANGE, free_local_port


def test_free_local_port_is_bindable_and_outside_the_ephemeral_range():
    lo, hi = PORT_RANGE
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_lo = int(f.read().split()[0])
    assert hi <= ephemeral_lo
    held = []
    try:
        for _ in range(10):  # ports held open are never handed out again
            port = free_local_port()
            assert lo <= port < hi and port not in [s.getsockname()[1] for s in held]
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            held.append(s)
    finally:
        for s in held:
            s.close()
