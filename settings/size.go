package settings

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Binary size units, largest first: FormatSize picks the first that divides
// a size exactly.
var sizeUnits = []struct {
	name  string
	short string
	bytes uint64
}{
	{"TiB", "T", 1 << 40},
	{"GiB", "G", 1 << 30},
	{"MiB", "M", 1 << 20},
	{"KiB", "K", 1 << 10},
}

// decimalUnits are refused rather than guessed at: "1MB" means 1048576 bytes
// to some readers and 1000000 to others, and a block device off by 4.9% in
// size is a bug found late.
var decimalUnits = map[string]uint64{
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
}

// ParseSize parses a size in bytes: a plain integer ("4096"), or an integer
// and a binary unit, with or without a space between: B, KiB, MiB, GiB,
// TiB, or the short forms K, M, G, T, which mean the same powers of 1024.
// Units are case-sensitive. Decimal units (KB, MB, GB, TB) are rejected
// with a hint; write the number of bytes instead. Fractions are rejected:
// "1.5GiB" is "1536MiB".
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	digits, unit := t[:i], strings.TrimSpace(t[i:])
	if digits == "" {
		if strings.HasPrefix(t, "-") {
			return 0, fmt.Errorf("%q: a size cannot be negative", s)
		}
		return 0, fmt.Errorf("%q is not a size; want a whole number of bytes with an optional unit, such as 4096 or 256MiB", s)
	}
	if strings.HasPrefix(unit, ".") {
		return 0, fmt.Errorf("%q: a size is a whole number; use a smaller unit instead of a fraction (1.5GiB is 1536MiB)", s)
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: number too large", s)
	}
	mul, err := unitBytes(unit)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	hi, lo := bits.Mul64(n, mul)
	if hi != 0 {
		return 0, fmt.Errorf("%q: too large (more than 16 EiB)", s)
	}
	return lo, nil
}

func unitBytes(unit string) (uint64, error) {
	if unit == "" || unit == "B" {
		return 1, nil
	}
	for _, u := range sizeUnits {
		if unit == u.name || unit == u.short {
			return u.bytes, nil
		}
	}
	if dec, ok := decimalUnits[unit]; ok {
		bin := strings.ToUpper(unit[:1]) + "iB"
		return 0, fmt.Errorf("decimal unit %s is not accepted; write %s for %d bytes, or the plain number of bytes for %d",
			unit, bin, binaryOf(bin), dec)
	}
	return 0, fmt.Errorf("unknown unit %q; use B, KiB, MiB, GiB or TiB (K, M, G, T are the same binary units)", unit)
}

func binaryOf(name string) uint64 {
	for _, u := range sizeUnits {
		if u.name == name {
			return u.bytes
		}
	}
	return 0
}

// FormatSize formats n in the largest binary unit that represents it
// exactly, so that ParseSize(FormatSize(n)) == n: 1073741824 is "1GiB",
// 1610612736 is "1536MiB", 1000 is "1000B".
func FormatSize(n uint64) string {
	for _, u := range sizeUnits {
		if n >= u.bytes && n%u.bytes == 0 {
			return strconv.FormatUint(n/u.bytes, 10) + u.name
		}
	}
	return strconv.FormatUint(n, 10) + "B"
}
