package harness

import (
	"errors"
	"fmt"
	"net"
)

// ReserveRun binds n consecutive free loopback TCP ports and returns their
// listeners, which stay bound until closed or handed to the nodes.
func ReserveRun(n int) ([]*net.TCPListener, error) {
	for try := 0; try < 200; try++ {
		first, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, fmt.Errorf("harness: free port: %w", err)
		}
		run := []*net.TCPListener{first}
		base := port(first)
		for p := base + 1; p < base+n && p <= 65535; p++ {
			l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
			if err != nil {
				break
			}
			run = append(run, l)
		}
		if len(run) == n {
			return run, nil
		}
		for _, l := range run {
			l.Close()
		}
	}
	return nil, errors.New("harness: no run of free ports")
}

func port(l *net.TCPListener) int { return l.Addr().(*net.TCPAddr).Port }
