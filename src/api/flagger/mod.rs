//! `flagger.app/v1beta1`: Canary, MetricTemplate, AlertProvider.

pub mod alert_provider;
pub mod canary;
pub mod metric_template;

pub use alert_provider::AlertProvider;
pub use canary::Canary;
pub use metric_template::MetricTemplate;
