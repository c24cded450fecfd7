//! `flagger.app/v1beta1`: Canary, MetricTemplate, AlertProvider.

pub mod alert_provider;
pub mod canary;
pub mod metric_template;

pub use alert_provider::{AlertProvider, AlertProviderSpec, AlertProviderType};
pub use canary::{
    Canary, CanaryAlert, CanaryAnalysis, CanaryMetric, CanaryPhase, CanaryService, CanarySpec,
    CanaryStatus, CanaryWebhook, HookType,
};
pub use metric_template::{MetricProviderType, MetricTemplate, MetricTemplateSpec};
