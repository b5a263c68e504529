"""edwards25519 from its definition (RFC 8032, 5.1), affine and slow: for the key and signature
tests only (to derive the small-order points and to forge signatures no library would make)."""
P = 2 ** 255 - 19
D = -121665 * pow(121666, P - 2, P) % P
L = 2 ** 252 + 27742317777372353535851937790883648493      # the prime subgroup's order
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)


def add(p1, p2):
    (x1, y1), (x2, y2) = p1, p2
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P)


def mul(n, pt):
    out = IDENTITY
    while n:
        if n & 1:
            out = add(out, pt)
        pt = add(pt, pt)
        n >>= 1
    return out


def decode(b):
    """RFC 8032 5.1.3, strict: None for a non-canonical y, no x, or x = 0 with the sign bit."""
    v = int.from_bytes(b, "little")
    y, sign = v & ((1 << 255) - 1), v >> 255
    if y >= P:
        return None
    u, w = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(w, 3, P) * pow(u * pow(w, 7, P), (P - 5) // 8, P) % P
    if w * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    elif w * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y)


def encode(pt):
    x, y = pt
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def base():
    """B: y = 4/5, x even."""
    return decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
