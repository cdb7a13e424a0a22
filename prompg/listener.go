package prompg

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sprockets/sprocketspg/listen"
)

// ChannelLabel is the label of the listener metrics that names the
// notification channel.
const ChannelLabel = "channel"

var _ prometheus.Collector = (*ListenerCollector)(nil)

// A ListenerCollector is a prometheus.Collector of a listen.Listener's
// counters, labelled with the listener's instance (PoolLabel) and, for
// the per-channel ones, the channel (ChannelLabel):
//
//	sprocketspg_listen_notifications_received_total{pool, channel}
//	sprocketspg_listen_notifications_dropped_total{pool, channel}
//	sprocketspg_listen_handler_errors_total{pool, channel}
//	sprocketspg_listen_handler_panics_total{pool, channel}
//	sprocketspg_listen_reconnects_total{pool}
//	sprocketspg_listen_connected{pool}  (1 while it listens to all its channels)
//
// It reads the listener's Stats when scraped.
type ListenerCollector struct {
	l                                 *listen.Listener
	received, dropped, errors, panics *prometheus.Desc
	reconnects, connected             *prometheus.Desc
}

// NewListenerCollector returns the collector of l's counters. Its pool
// label is l.Instance() when it is called: the name given to
// listen.ForInstance (as listen.Notifications does), or, for a listener
// without one, its instance's name once it has started, so make the
// collector after start. Of opts only WithConstLabels applies; a pool
// label there replaces the instance's name. It does no I/O.
func NewListenerCollector(l *listen.Listener, opts ...Option) *ListenerCollector {
	o := newOptions(opts)
	labels := prometheus.Labels{PoolLabel: l.Instance()}
	for k, v := range o.constLabels {
		labels[k] = v
	}
	channel := []string{ChannelLabel}
	return &ListenerCollector{
		l: l,
		received: prometheus.NewDesc("sprocketspg_listen_notifications_received_total",
			"PostgreSQL notifications that arrived on the listener's connection.", channel, labels),
		dropped: prometheus.NewDesc("sprocketspg_listen_notifications_dropped_total",
			"PostgreSQL notifications dropped because the channel's queue was full.", channel, labels),
		errors: prometheus.NewDesc("sprocketspg_listen_handler_errors_total",
			"Errors returned by the channel's notification and backlog handlers.", channel, labels),
		panics: prometheus.NewDesc("sprocketspg_listen_handler_panics_total",
			"Panics of the channel's handlers, recovered.", channel, labels),
		reconnects: prometheus.NewDesc("sprocketspg_listen_reconnects_total",
			"Outages of the listener's connection that it came back from.", nil, labels),
		connected: prometheus.NewDesc("sprocketspg_listen_connected",
			"1 while the listener's connection is up, 0 otherwise.", nil, labels),
	}
}

// Describe implements prometheus.Collector.
func (c *ListenerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.received, c.dropped, c.errors, c.panics, c.reconnects, c.connected} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *ListenerCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	for _, cs := range st.Channels {
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(cs.Received), cs.Channel)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(cs.Dropped), cs.Channel)
		ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(cs.Failed), cs.Channel)
		ch <- prometheus.MustNewConstMetric(c.panics, prometheus.CounterValue, float64(cs.Panicked), cs.Channel)
	}
	ch <- prometheus.MustNewConstMetric(c.reconnects, prometheus.CounterValue, float64(st.Reconnects))
	connected := 0.0
	if st.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, connected)
}
