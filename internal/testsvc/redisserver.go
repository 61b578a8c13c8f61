package testsvc

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServer is a redis-server process of the test's own, without
// persistence, for tests that stop Redis and start it again: a restart
// loses every task, and connections drop while it is down.
type RedisServer struct {
	URL  string // redis://127.0.0.1:PORT/0
	t    testing.TB
	bin  string
	port int
	cmd  *exec.Cmd
}

// StartRedisServer starts a redis-server on a free loopback port and stops it
// when the test ends. It skips the test where no redis-server binary is
// installed (Redis run from Docker only): deploy/services.sh installs one on
// Debian, where CI runs.
func StartRedisServer(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("testsvc: no redis-server binary to start and stop (deploy/services.sh installs one on Debian)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &RedisServer{URL: fmt.Sprintf("redis://127.0.0.1:%d/0", port), t: t, bin: bin, port: port}
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// Start starts the server (again), empty, on its port, and waits until it
// answers.
func (s *RedisServer) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning")
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("testsvc: start redis-server: %v", err)
	}
	opt, _ := redis.ParseURL(s.URL)
	c := redis.NewClient(opt)
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.t.Fatalf("testsvc: redis-server on port %d does not answer", s.port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill kills the server (SIGKILL: no shutdown, no save) and waits for it to
// exit.
func (s *RedisServer) Kill() {
	if s.cmd != nil && s.cmd.ProcessState == nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
	}
}
