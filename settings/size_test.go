package settings

import "testing"

func TestSizes(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    uint64
		back string
	}{
		{"0", 0, "0B"},
		{"512", 512, "512B"},
		{"1000", 1000, "1000B"},
		{"1024", 1024, "1KiB"},
		{"4KiB", 4 << 10, "4KiB"},
		{"4K", 4 << 10, "4KiB"},
		{"4 KiB", 4 << 10, "4KiB"},
		{" 64KiB ", 64 << 10, "64KiB"},
		{"1536KiB", 1536 << 10, "1536KiB"},
		{"1MiB", 1 << 20, "1MiB"},
		{"256M", 256 << 20, "256MiB"},
		{"1GiB", 1 << 30, "1GiB"},
		{"1536MiB", 1536 << 20, "1536MiB"},
		{"1G", 1 << 30, "1GiB"},
		{"2TiB", 2 << 40, "2TiB"},
		{"3T", 3 << 40, "3TiB"},
		{"2048GiB", 2 << 40, "2TiB"},
		{"100B", 100, "100B"},
		{"16777215TiB", 16777215 << 40, "16777215TiB"},
		{"18446744073709551615", 1<<64 - 1, "18446744073709551615B"},
	} {
		n, err := ParseSize(c.in)
		if err != nil || n != c.n {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, n, err, c.n)
			continue
		}
		if got := FormatSize(n); got != c.back {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, c.back)
		}
		if again, err := ParseSize(FormatSize(n)); err != nil || again != n {
			t.Errorf("round trip of %d through %q gave %d, %v", n, FormatSize(n), again, err)
		}
	}
	for _, bad := range []string{"", "KiB", "-1", "1.5GiB", "1MB", "1kB", "1 mib", "1Mb", "1e9", "0x10", "16777216TiB", "99999999999999999999"} {
		if n, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", bad, n)
		}
	}
	// Every power of two and its neighbours survive a round trip.
	for shift := 0; shift < 64; shift++ {
		for _, n := range []uint64{1 << shift, 1<<shift + 512, 3 << shift >> 1} {
			if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
				t.Errorf("round trip of %d through %q gave %d, %v", n, FormatSize(n), back, err)
			}
		}
	}
}
