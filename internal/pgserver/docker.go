package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

// ownerLabel marks containers started by pgserver with host/PID of their
// owner. Unlike a local server a container is not killed with its owner,
// so the next Start on the same host removes those of dead owners.
const ownerLabel = "io.github.sprockets.sprocketspg.pgserver.owner"

// pingDocker reports whether a Docker engine answers before ctx ends.
func pingDocker(ctx context.Context) error {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return fmt.Errorf("create docker client: %w", err)
	}
	defer pool.Client.HTTPClient.CloseIdleConnections()
	if err := pool.Client.PingWithContext(ctx); err != nil {
		return fmt.Errorf("ping docker engine: %w", err)
	}
	return nil
}

// dockerServer is a server run in a container.
type dockerServer struct {
	pool *dockertest.Pool
	res  *dockertest.Resource
	u    string
}

func startDocker(ctx context.Context, cfg *config) (_ *dockerServer, err error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, fmt.Errorf("create docker client: %w", err)
	}
	host, hostIP := dockerHost(pool.Client.Endpoint())
	removeStaleContainers(pool, cfg.logf)

	// A fixed host port, rather than one Docker picks, survives a stop and
	// start of the container, which outage tests rely on.
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	repo, tag, _ := strings.Cut(cfg.dockerImage, ":")
	hostname, _ := os.Hostname()
	cmd := []string{"postgres"}
	for _, s := range serverSettings {
		if strings.HasPrefix(s, "listen_addresses=") {
			continue // the container must listen on its own interface
		}
		cmd = append(cmd, "-c", s)
	}
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: repo,
		Tag:        tag,
		Cmd:        cmd,
		Env: []string{
			"POSTGRES_HOST_AUTH_METHOD=trust",
			"POSTGRES_INITDB_ARGS=--no-sync -E UTF8 --locale=C",
			"LC_ALL=C",
		},
		Labels:       map[string]string{ownerLabel: hostname + "/" + strconv.Itoa(os.Getpid())},
		ExposedPorts: []string{"5432/tcp"},
		PortBindings: map[dc.Port][]dc.PortBinding{
			"5432/tcp": {{HostIP: hostIP, HostPort: strconv.Itoa(port)}},
		},
	}, func(hc *dc.HostConfig) {
		hc.AutoRemove = false
		hc.RestartPolicy = dc.RestartPolicy{Name: "no"}
	})
	if err != nil {
		return nil, fmt.Errorf("run container %s: %w", cfg.dockerImage, err)
	}
	d := &dockerServer{
		pool: pool,
		res:  res,
		u:    fmt.Sprintf("postgres://postgres@%s:%d/postgres?sslmode=disable", host, port),
	}
	defer func() {
		if err != nil {
			_ = pool.Purge(res)
		}
	}()
	if err := d.waitReady(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// dockerHost returns the host to connect to for a published port, and the
// host address to publish it on: loopback for a local engine, every
// address for a remote one.
func dockerHost(endpoint string) (host, hostIP string) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme == "unix" || u.Scheme == "npipe" {
		return "127.0.0.1", "127.0.0.1"
	}
	switch u.Hostname() {
	case "", "localhost", "127.0.0.1", "::1":
		return "127.0.0.1", "127.0.0.1"
	}
	return u.Hostname(), ""
}

func (d *dockerServer) url() string { return d.u }

func (d *dockerServer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := waitReady(ctx, d.u, nil); err != nil {
		return fmt.Errorf("start container %s: %w", d.res.Container.Name, err)
	}
	return nil
}

func (d *dockerServer) stop(ctx context.Context) error {
	err := d.pool.Client.StopContainerWithContext(d.res.Container.ID, uint(stopTimeout/time.Second), ctx)
	var notRunning *dc.ContainerNotRunning
	if errors.As(err, &notRunning) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop container %s: %w", d.res.Container.Name, err)
	}
	return nil
}

func (d *dockerServer) start(ctx context.Context) error {
	err := d.pool.Client.StartContainerWithContext(d.res.Container.ID, nil, ctx)
	var running *dc.ContainerAlreadyRunning
	if errors.As(err, &running) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("start container %s: %w", d.res.Container.Name, err)
	}
	return d.waitReady(ctx)
}

func (d *dockerServer) close() error {
	defer d.pool.Client.HTTPClient.CloseIdleConnections()
	if err := d.pool.Purge(d.res); err != nil {
		return fmt.Errorf("remove container %s: %w", d.res.Container.Name, err)
	}
	return nil
}

// removeStaleContainers removes containers that pgserver started on this
// host for processes that have exited.
func removeStaleContainers(pool *dockertest.Pool, logf func(string, ...any)) {
	hostname, _ := os.Hostname()
	list, err := pool.Client.ListContainers(dc.ListContainersOptions{
		All:     true,
		Filters: map[string][]string{"label": {ownerLabel}},
	})
	if err != nil {
		logf("pgserver: list stale containers: %v", err)
		return
	}
	for _, c := range list {
		host, pidText, ok := strings.Cut(c.Labels[ownerLabel], "/")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || host != hostname || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := pool.Client.RemoveContainer(dc.RemoveContainerOptions{ID: c.ID, Force: true, RemoveVolumes: true}); err != nil {
			logf("pgserver: remove stale container %s: %v", c.ID, err)
		}
	}
}
