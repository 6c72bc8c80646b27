//! Verdicts by cause, port and container, with a bound on the series anyone can make: a
//! tenant starting containers, or clients refused on every port under `--all-tcp`, would
//! otherwise grow the page and Prometheus's storage without limit. Past [`MAX_SERIES`]
//! distinct (cause, port, container), a verdict of a new combination is counted in its
//! cause's overflow series (`port` and `container` [`OTHER`]) and in
//! `sshtrace_metrics_series_capped_total`: the totals by cause stay exact.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::{enrich::container::Container, escape, verdict::Cause};

/// Distinct (cause, port, container) series kept; the overflow series (one per cause at
/// most) come on top.
pub const MAX_SERIES: usize = 256;
/// `port` and `container` of the overflow series: no port is called that, and no
/// Docker or Podman name starts with `_`.
pub const OTHER: &str = "_other";
/// A container label's longest value, in characters (longer names are cut).
const MAX_CONTAINER_CHARS: usize = 128;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    cause: &'static str,
    port: String,
    /// The runtime's name (its id before the runtime answered), empty on the host.
    container: String,
}

impl VerdictLabels {
    fn overflow(cause: Cause) -> Self {
        Self {
            cause: cause.as_str(),
            port: OTHER.to_owned(),
            container: OTHER.to_owned(),
        }
    }
}

pub struct VerdictSeries {
    family: Family<VerdictLabels, Counter>,
    /// Verdicts counted in an overflow series.
    capped: Counter,
    /// Series made so far, the overflow series left out.
    distinct: usize,
}

impl VerdictSeries {
    pub fn new(family: Family<VerdictLabels, Counter>, capped: Counter) -> Self {
        Self {
            family,
            capped,
            distinct: 0,
        }
    }

    /// Counts `connections` verdicts of `cause` on local port `port`.
    pub fn count(
        &mut self,
        cause: Cause,
        port: u16,
        container: Option<&Container>,
        connections: u64,
    ) {
        let labels = VerdictLabels {
            cause: cause.as_str(),
            port: port.to_string(),
            container: container_label(container),
        };
        if let Some(counter) = self.family.get(&labels) {
            counter.inc_by(connections);
            return;
        }
        let labels = if self.distinct < MAX_SERIES {
            self.distinct += 1;
            labels
        } else {
            self.capped.inc_by(connections);
            VerdictLabels::overflow(cause)
        };
        self.family.get_or_create(&labels).inc_by(connections);
    }
}

/// The container's name as the text view shows it (no control or invisible character raw:
/// `\n`, `\x1b`, …), cut to [`MAX_CONTAINER_CHARS`]; the exposition format then escapes `\`,
/// `"` and newlines itself (prometheus-client).
fn container_label(container: Option<&Container>) -> String {
    let Some(c) = container else {
        return String::new();
    };
    let name = c.name.as_deref().unwrap_or(&c.id);
    escape::text(name)
        .chars()
        .take(MAX_CONTAINER_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::prometheus_text, registry::Registry};

    use super::*;

    fn series() -> (Registry, VerdictSeries) {
        let mut registry = Registry::with_prefix("sshtrace");
        let family = Family::<VerdictLabels, Counter>::default();
        let capped = Counter::default();
        registry.register("verdicts", "v", family.clone());
        registry.register("metrics_series_capped", "c", capped.clone());
        (registry, VerdictSeries::new(family, capped))
    }

    fn page(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_text::encode(&mut out, registry).unwrap();
        out
    }

    fn named(name: &str) -> Container {
        Container {
            id: "0".repeat(64),
            name: Some(name.to_owned()),
            runtime: "podman",
            ..Default::default()
        }
    }

    fn value(page: &str, series: &str) -> Option<u64> {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_host_has_an_empty_container_and_aggregated_refusals_count_as_connections() {
        let (registry, mut verdicts) = series();
        verdicts.count(Cause::NotListening, 2222, None, 40);
        verdicts.count(Cause::NotListening, 2222, None, 2);
        let page = page(&registry);
        assert_eq!(
            value(
                &page,
                r#"sshtrace_verdicts_total{cause="not_listening",port="2222",container=""}"#
            ),
            Some(42),
            "{page}"
        );
    }

    /// A tenant starting containers past the cap adds no series: the verdicts go to their
    /// cause's overflow series and are counted as capped; series made before still count.
    #[test]
    fn series_past_the_cap_are_folded_and_counted() {
        let (registry, mut verdicts) = series();
        for i in 0..MAX_SERIES + 44 {
            verdicts.count(Cause::SshdCrashed, 22, Some(&named(&format!("c{i}"))), 1);
        }
        verdicts.count(Cause::SshdKilled, 22, Some(&named("late")), 3);
        verdicts.count(Cause::SshdCrashed, 22, Some(&named("c0")), 1);
        let page = page(&registry);
        let lines = page
            .lines()
            .filter(|l| l.starts_with("sshtrace_verdicts_total{"));
        assert_eq!(lines.count(), MAX_SERIES + 2, "{page}");
        let other = |cause: &str| {
            value(
                &page,
                &format!(
                    r#"sshtrace_verdicts_total{{cause="{cause}",port="_other",container="_other"}}"#
                ),
            )
        };
        assert_eq!(other("sshd_crashed"), Some(44));
        assert_eq!(other("sshd_killed"), Some(3));
        assert_eq!(
            value(&page, "sshtrace_metrics_series_capped_total"),
            Some(47)
        );
        assert_eq!(
            value(
                &page,
                r#"sshtrace_verdicts_total{cause="sshd_crashed",port="22",container="c0"}"#
            ),
            Some(2)
        );
    }

    /// A hostile name stays inside its label: no raw newline or escape sequence reaches the
    /// page, and `"` and `\` are escaped as the exposition format says.
    #[test]
    fn a_hostile_container_name_stays_inside_its_label() {
        let (registry, mut verdicts) = series();
        let hostile = "x\"} 1\nsshtrace_forged_total 9\n\\\x1b[31m\u{202e}";
        verdicts.count(Cause::SshdKilled, 22, Some(&named(hostile)), 1);
        let page = page(&registry);
        assert!(
            !page.contains('\x1b') && !page.contains('\u{202e}'),
            "{page}"
        );
        assert!(
            !page.lines().any(|l| l.starts_with("sshtrace_forged")),
            "{page}"
        );
        let expected = r#"container="x\"} 1\\nsshtrace_forged_total 9\\n\\\\x1b[31m\\u{202e}"} 1"#;
        assert!(page.contains(expected), "{page}");
    }

    #[test]
    fn a_long_name_is_cut_and_a_nameless_container_goes_by_its_id() {
        assert_eq!(
            container_label(Some(&named(&"n".repeat(1000)))).len(),
            MAX_CONTAINER_CHARS
        );
        let unnamed = Container {
            id: "ab".repeat(32),
            ..named("")
        };
        let unnamed = Container {
            name: None,
            ..unnamed
        };
        assert_eq!(container_label(Some(&unnamed)), "ab".repeat(32));
    }
}
