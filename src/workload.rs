//! Where images live in pod-bearing objects: every (container or image volume, JSON pointer,
//! image) of a Pod or of the pod template of a workload kind. Works on raw JSON so unknown
//! fields never matter.

use std::fmt;

use serde_json::Value;

/// A kind of object that carries a pod spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// `v1` Pod.
    Pod,
    /// `v1` PodTemplate.
    PodTemplate,
    /// `v1` ReplicationController.
    ReplicationController,
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` ReplicaSet.
    ReplicaSet,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
    /// `batch/v1` Job.
    Job,
    /// `batch/v1` CronJob.
    CronJob,
}

/// Every kind pinhook handles, for documentation and webhook rules.
pub const ALL_KINDS: &[WorkloadKind] = &[
    WorkloadKind::Pod,
    WorkloadKind::PodTemplate,
    WorkloadKind::ReplicationController,
    WorkloadKind::Deployment,
    WorkloadKind::ReplicaSet,
    WorkloadKind::StatefulSet,
    WorkloadKind::DaemonSet,
    WorkloadKind::Job,
    WorkloadKind::CronJob,
];

impl WorkloadKind {
    /// Recognizes a kind by API group (`""` for core) and kind name; any version.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        Some(match (group, kind) {
            ("", "Pod") => Self::Pod,
            ("", "PodTemplate") => Self::PodTemplate,
            ("", "ReplicationController") => Self::ReplicationController,
            ("apps", "Deployment") => Self::Deployment,
            ("apps", "ReplicaSet") => Self::ReplicaSet,
            ("apps", "StatefulSet") => Self::StatefulSet,
            ("apps", "DaemonSet") => Self::DaemonSet,
            ("batch", "Job") => Self::Job,
            ("batch", "CronJob") => Self::CronJob,
            _ => return None,
        })
    }

    /// Recognizes a kind from a manifest's `apiVersion` (`apps/v1`, `v1`) and `kind`.
    pub fn from_api_version(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Self::from_group_kind(group, kind)
    }

    /// The kind's name, e.g. `Deployment`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::PodTemplate => "PodTemplate",
            Self::ReplicationController => "ReplicationController",
            Self::Deployment => "Deployment",
            Self::ReplicaSet => "ReplicaSet",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
        }
    }

    /// The plural resource name used in webhook rules, e.g. `deployments`.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Pod => "pods",
            Self::PodTemplate => "podtemplates",
            Self::ReplicationController => "replicationcontrollers",
            Self::Deployment => "deployments",
            Self::ReplicaSet => "replicasets",
            Self::StatefulSet => "statefulsets",
            Self::DaemonSet => "daemonsets",
            Self::Job => "jobs",
            Self::CronJob => "cronjobs",
        }
    }

    /// The API group, `""` for core.
    pub fn group(self) -> &'static str {
        match self {
            Self::Pod | Self::PodTemplate | Self::ReplicationController => "",
            Self::Deployment | Self::ReplicaSet | Self::StatefulSet | Self::DaemonSet => "apps",
            Self::Job | Self::CronJob => "batch",
        }
    }

    /// The JSON path from the object's root to its pod spec.
    pub fn pod_spec_path(self) -> &'static [&'static str] {
        match self {
            Self::Pod => &["spec"],
            Self::PodTemplate => &["template", "spec"],
            Self::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => &["spec", "template", "spec"],
        }
    }
}

/// A list of a pod spec through which an image enters the Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// `containers`
    Containers,
    /// `initContainers`
    InitContainers,
    /// `ephemeralContainers`
    EphemeralContainers,
    /// `volumes[].image.reference`: an OCI image mounted as a volume (Kubernetes 1.31+).
    ImageVolumes,
}

impl Section {
    /// All sections, in the order they are reported.
    pub const ALL: [Section; 4] = [
        Section::Containers,
        Section::InitContainers,
        Section::EphemeralContainers,
        Section::ImageVolumes,
    ];

    /// What an entry of this list is called in messages: `container` or `volume`.
    pub fn noun(self) -> &'static str {
        match self {
            Section::ImageVolumes => "volume",
            _ => "container",
        }
    }

    /// The field name in the pod spec.
    pub fn field(self) -> &'static str {
        match self {
            Section::Containers => "containers",
            Section::InitContainers => "initContainers",
            Section::EphemeralContainers => "ephemeralContainers",
            Section::ImageVolumes => "volumes",
        }
    }
}

/// The `image` field of one container, as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageField<'a> {
    /// A string (possibly not a valid reference).
    Str(&'a str),
    /// Absent, null or empty: left for a later admission plugin or controller to set.
    Unset,
    /// Present but not a string.
    NotAString,
}

/// One container or image volume and its image, located in the object.
#[derive(Debug, Clone, Copy)]
pub struct ContainerImage<'a> {
    /// The container's or volume's `name` (empty when absent).
    pub name: &'a str,
    /// Which list it is in.
    pub section: Section,
    /// Its index in that list.
    pub index: usize,
    /// Its `image` field (`image.reference` of a volume).
    pub image: ImageField<'a>,
    spec_path: &'static [&'static str],
}

impl ContainerImage<'_> {
    /// The field path for people, e.g. `spec.template.spec.containers[0]` or
    /// `spec.volumes[1].image.reference`.
    pub fn path(&self) -> String {
        let suffix = match self.section {
            Section::ImageVolumes => ".image.reference",
            _ => "",
        };
        format!(
            "{}.{}[{}]{suffix}",
            self.spec_path.join("."),
            self.section.field(),
            self.index
        )
    }

    /// What it is in messages: `container` or `volume`.
    pub fn noun(&self) -> &'static str {
        self.section.noun()
    }

    /// How audit annotations name it: the container's name, or `volume/NAME`.
    pub fn label(&self) -> String {
        label(self.section.noun(), self.name)
    }

    /// The JSON pointer to the image field, e.g. `/spec/template/spec/containers/0/image` or
    /// `/spec/volumes/1/image/reference`.
    pub fn pointer(&self) -> String {
        let mut p = String::with_capacity(48);
        for seg in self.spec_path {
            p.push('/');
            p.push_str(seg);
        }
        p.push('/');
        p.push_str(self.section.field());
        p.push('/');
        p.push_str(&self.index.to_string());
        p.push_str(match self.section {
            Section::ImageVolumes => "/image/reference",
            _ => "/image",
        });
        p
    }
}

impl fmt::Display for ContainerImage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} ({})", self.noun(), self.name, self.path())
    }
}

/// How audit annotations name an image site: a container by its name, a volume as `volume/NAME`.
pub fn label(noun: &str, name: &str) -> String {
    if noun == "container" {
        name.to_owned()
    } else {
        format!("{noun}/{name}")
    }
}

/// The pod spec of `object` (a `kind`), if present.
pub fn pod_spec(kind: WorkloadKind, object: &Value) -> Option<&Value> {
    kind.pod_spec_path()
        .iter()
        .try_fold(object, |v, seg| v.get(seg))
}

/// Every image site of `object` (a `kind`), in order: containers, initContainers,
/// ephemeralContainers, then the volumes that mount an image.
pub fn containers(kind: WorkloadKind, object: &Value) -> Vec<ContainerImage<'_>> {
    let spec_path = kind.pod_spec_path();
    let Some(spec) = pod_spec(kind, object) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for section in Section::ALL {
        let Some(list) = spec.get(section.field()).and_then(Value::as_array) else {
            continue;
        };
        for (index, c) in list.iter().enumerate() {
            let field = match section {
                // Only volumes of the `image` type carry an image; others are not image sites.
                Section::ImageVolumes => match c.get("image") {
                    Some(source) => source.get("reference"),
                    None => continue,
                },
                _ => c.get("image"),
            };
            let image = match field {
                None | Some(Value::Null) => ImageField::Unset,
                Some(Value::String(s)) if s.is_empty() => ImageField::Unset,
                Some(Value::String(s)) => ImageField::Str(s),
                Some(_) => ImageField::NotAString,
            };
            out.push(ContainerImage {
                name: c.get("name").and_then(Value::as_str).unwrap_or(""),
                section,
                index,
                image,
                spec_path,
            });
        }
    }
    out
}

/// The containers of `new` whose image is new or changed relative to `old` (matched by list
/// and container name, or by position when a container has no name).
pub fn changed<'a>(
    new: Vec<ContainerImage<'a>>,
    old: &[ContainerImage<'_>],
) -> Vec<ContainerImage<'a>> {
    new.into_iter()
        .filter(|c| {
            let before = old.iter().find(|o| {
                o.section == c.section
                    && if c.name.is_empty() {
                        o.index == c.index
                    } else {
                        o.name == c.name
                    }
            });
            before.is_none_or(|o| o.image != c.image)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(images: &[&str]) -> Value {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, img)| json!({"name": format!("c{i}"), "image": img}))
            .collect();
        json!({"spec": {"template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn finds_all_three_sections_of_a_pod() {
        let pod = json!({"spec": {
            "containers": [{"name": "web", "image": "nginx:1"}],
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox:latest"}]
        }});
        let cs = containers(WorkloadKind::Pod, &pod);
        let pointers: Vec<String> = cs.iter().map(ContainerImage::pointer).collect();
        assert_eq!(
            pointers,
            [
                "/spec/containers/0/image",
                "/spec/initContainers/0/image",
                "/spec/ephemeralContainers/0/image"
            ]
        );
        assert_eq!(cs[2].path(), "spec.ephemeralContainers[0]");
    }

    #[test]
    fn image_volumes_are_image_sites_and_other_volumes_are_not() {
        let d = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "web", "image": "nginx:1"}],
            "volumes": [
                {"name": "cache", "emptyDir": {}},
                {"name": "model", "image": {"reference": "quay.io/acme/model:latest", "pullPolicy": "IfNotPresent"}},
                {"name": "blank", "image": {}}
            ]
        }}}});
        let cs = containers(WorkloadKind::Deployment, &d);
        assert_eq!(cs.len(), 3);
        let model = &cs[1];
        assert_eq!(model.section, Section::ImageVolumes);
        assert_eq!(model.index, 1);
        assert_eq!(model.image, ImageField::Str("quay.io/acme/model:latest"));
        assert_eq!(
            model.pointer(),
            "/spec/template/spec/volumes/1/image/reference"
        );
        assert_eq!(
            model.to_string(),
            "volume \"model\" (spec.template.spec.volumes[1].image.reference)"
        );
        assert_eq!(cs[2].image, ImageField::Unset);
    }

    #[test]
    fn cronjob_path_goes_through_job_template() {
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}}}});
        let cs = containers(WorkloadKind::CronJob, &cj);
        assert_eq!(
            cs[0].pointer(),
            "/spec/jobTemplate/spec/template/spec/containers/0/image"
        );
        assert_eq!(
            cs[0].path(),
            "spec.jobTemplate.spec.template.spec.containers[0]"
        );
    }

    #[test]
    fn pod_template_path_has_no_spec_prefix() {
        let pt = json!({"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}});
        assert_eq!(
            containers(WorkloadKind::PodTemplate, &pt)[0].pointer(),
            "/template/spec/containers/0/image"
        );
    }

    #[test]
    fn missing_image_is_unset_not_an_error() {
        let d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}});
        assert_eq!(
            containers(WorkloadKind::Deployment, &d)[0].image,
            ImageField::Unset
        );
    }

    #[test]
    fn non_string_image_is_reported() {
        let d = json!({"spec": {"containers": [{"name": "a", "image": 42}]}});
        assert_eq!(
            containers(WorkloadKind::Pod, &d)[0].image,
            ImageField::NotAString
        );
    }

    #[test]
    fn missing_spec_yields_nothing() {
        assert!(containers(WorkloadKind::Deployment, &json!({"metadata": {}})).is_empty());
    }

    #[test]
    fn changed_keeps_only_new_or_changed_images() {
        let old = deployment(&["a:1", "b:latest"]);
        let new = deployment(&["a:2", "b:latest", "c:latest"]);
        let old_c = containers(WorkloadKind::Deployment, &old);
        let names: Vec<&str> = changed(containers(WorkloadKind::Deployment, &new), &old_c)
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["c0", "c2"]);
    }

    #[test]
    fn changed_matches_by_name_not_position() {
        let old = json!({"spec": {"containers": [{"name": "x", "image": "x:latest"}, {"name": "y", "image": "y:latest"}]}});
        let new = json!({"spec": {"containers": [{"name": "y", "image": "y:latest"}, {"name": "x", "image": "x:latest"}]}});
        let old_c = containers(WorkloadKind::Pod, &old);
        assert!(changed(containers(WorkloadKind::Pod, &new), &old_c).is_empty());
    }

    #[test]
    fn recognizes_kinds_by_group() {
        assert_eq!(
            WorkloadKind::from_api_version("apps/v1", "Deployment"),
            Some(WorkloadKind::Deployment)
        );
        assert_eq!(
            WorkloadKind::from_api_version("v1", "Pod"),
            Some(WorkloadKind::Pod)
        );
        assert_eq!(WorkloadKind::from_api_version("v1", "Deployment"), None);
        assert_eq!(
            WorkloadKind::from_group_kind("batch", "CronJob"),
            Some(WorkloadKind::CronJob)
        );
        assert_eq!(WorkloadKind::from_group_kind("", "ConfigMap"), None);
    }
}
