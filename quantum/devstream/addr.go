package devstream

import (
	"fmt"
	"net"
	"strings"
)

// source is a parsed LinkOptions.Source.
type source struct {
	scheme string // "file", "tcp" or "unix"
	addr   string
}

func (s source) live() bool     { return s.scheme != "file" }
func (s source) String() string { return s.scheme + ":" + s.addr }

func parseSource(s string) (source, error) {
	scheme, addr, ok := strings.Cut(s, ":")
	if !ok || addr == "" {
		return source{}, fmt.Errorf("source %q: want file:PATH, tcp:HOST:PORT or unix:PATH", s)
	}
	switch scheme {
	case "file", "unix":
	case "tcp":
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return source{}, fmt.Errorf("source %q: want tcp:HOST:PORT", s)
		}
	default:
		return source{}, fmt.Errorf("source %q: unknown scheme %q (file, tcp or unix)", s, scheme)
	}
	return source{scheme: scheme, addr: addr}, nil
}
