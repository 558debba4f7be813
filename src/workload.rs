//! Where images live in pod-bearing objects: every (container or image volume, JSON pointer,
//! image) of a Pod or of the pod template of a workload kind. Works on raw JSON so unknown
//! fields never matter.

use std::collections::HashMap;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
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
    pub fn pointer(&self) -> PointerBuf {
        let mut p = PointerBuf::from_tokens(self.spec_path.iter().copied());
        p.push_back(self.section.field());
        p.push_back(self.index);
        p.push_back("image");
        if self.section == Section::ImageVolumes {
            p.push_back("reference");
        }
        p
    }
}

impl<'a> ContainerImage<'a> {
    /// Its key for matching against the old object: the list and the name, or the position
    /// when it has no name.
    fn key(&self) -> (Section, Result<&'a str, usize>) {
        if self.name.is_empty() {
            (self.section, Err(self.index))
        } else {
            (self.section, Ok(self.name))
        }
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

/// The image sites of an old object, to find what each site of the new one was before.
#[derive(Debug, Default)]
pub struct Before<'a> {
    by_key: HashMap<(Section, Result<&'a str, usize>), ImageField<'a>>,
}

impl<'a> Before<'a> {
    /// Indexes the image sites of `old` (a `kind`); `None` for a create.
    pub fn of(kind: WorkloadKind, old: Option<&'a Value>) -> Self {
        let mut by_key = HashMap::new();
        for c in old.map(|o| containers(kind, o)).unwrap_or_default() {
            by_key.entry(c.key()).or_insert(c.image);
        }
        Self { by_key }
    }

    /// What `site` held in the old object (matched by list and name, or by position when it has
    /// no name); `None` when it is new.
    pub fn image(&self, site: &ContainerImage<'_>) -> Option<ImageField<'a>> {
        self.by_key.get(&site.key()).copied()
    }
}

/// The containers of `new` whose image is new or changed relative to `old` (matched by list
/// and container name, or by position when a container has no name).
pub fn changed<'a>(
    new: Vec<ContainerImage<'a>>,
    old: &[ContainerImage<'_>],
) -> Vec<ContainerImage<'a>> {
    let mut before: HashMap<_, ImageField<'_>> = HashMap::new();
    for o in old {
        before.entry(o.key()).or_insert(o.image);
    }
    new.into_iter()
        .filter(|c| before.get(&c.key()).is_none_or(|o| *o != c.image))
        .collect()
}

/// The credentials a pod's images are pulled with, as its spec names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullCredentials {
    /// `imagePullSecrets[].name`, in order.
    pub secrets: Vec<String>,
    /// `serviceAccountName` (or the deprecated `serviceAccount`), `default` when unset.
    pub service_account: String,
}

/// The pull secrets and service account of `object`'s pod spec.
pub fn pull_credentials(kind: WorkloadKind, object: &Value) -> PullCredentials {
    let spec = pod_spec(kind, object);
    let secrets = spec
        .and_then(|s| s.get("imagePullSecrets"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let service_account = spec
        .and_then(|s| {
            s.get("serviceAccountName")
                .or_else(|| s.get("serviceAccount"))
        })
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    PullCredentials {
        secrets,
        service_account,
    }
}

/// A pod-bearing object found in a manifest.
#[derive(Debug, Clone)]
pub struct Manifest<'a> {
    /// Its kind.
    pub kind: WorkloadKind,
    /// `metadata.namespace` (empty when not set).
    pub namespace: &'a str,
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.generateName`.
    pub generate_name: &'a str,
    /// The whole object.
    pub body: &'a Value,
    /// Where the object is in the document (`/items/2` in a `List`, empty at the root).
    pub pointer: PointerBuf,
}

/// Every pod-bearing object of a manifest document, the items of `*List` kinds included.
pub fn manifests(value: &Value) -> Vec<Manifest<'_>> {
    let mut out = Vec::new();
    collect_manifests(value, PointerBuf::new(), &mut out);
    out
}

fn collect_manifests<'a>(value: &'a Value, pointer: PointerBuf, out: &mut Vec<Manifest<'a>>) {
    let str_at = |ptr: &str| value.pointer(ptr).and_then(Value::as_str).unwrap_or("");
    let kind = str_at("/kind");
    if kind.ends_with("List")
        && let Some(items) = value.get("items").and_then(Value::as_array)
    {
        for (i, item) in items.iter().enumerate() {
            let mut at = pointer.clone();
            at.push_back("items");
            at.push_back(i);
            collect_manifests(item, at, out);
        }
        return;
    }
    if let Some(workload) = WorkloadKind::from_api_version(str_at("/apiVersion"), kind) {
        out.push(Manifest {
            kind: workload,
            namespace: str_at("/metadata/namespace"),
            name: str_at("/metadata/name"),
            generate_name: str_at("/metadata/generateName"),
            body: value,
            pointer,
        });
    }
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
        let pointers: Vec<String> = cs.iter().map(|c| c.pointer().to_string()).collect();
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
            model.pointer().as_str(),
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
            cs[0].pointer().as_str(),
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
            containers(WorkloadKind::PodTemplate, &pt)[0]
                .pointer()
                .as_str(),
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

    #[test]
    fn pointer_tokens_are_escaped() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        let p = containers(WorkloadKind::Pod, &pod)[0].pointer();
        assert_eq!(p.tokens().count(), 4);
        assert_eq!(p.as_str(), "/spec/containers/0/image");
    }

    #[test]
    fn before_finds_the_old_image_by_name_or_position() {
        let old =
            json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"image": "anon:1"}]}});
        let new = json!({"spec": {"containers": [{"image": "x:1"}, {"image": "anon:2"}, {"name": "a", "image": "a:1"}]}});
        let before = Before::of(WorkloadKind::Pod, Some(&old));
        let found: Vec<Option<ImageField<'_>>> = containers(WorkloadKind::Pod, &new)
            .iter()
            .map(|c| before.image(c))
            .collect();
        assert_eq!(
            found,
            [
                None,
                Some(ImageField::Str("anon:1")),
                Some(ImageField::Str("a:1"))
            ]
        );
        assert!(
            Before::of(WorkloadKind::Pod, None)
                .image(&containers(WorkloadKind::Pod, &new)[0])
                .is_none()
        );
    }

    #[test]
    fn pull_credentials_default_to_the_default_account() {
        let d = json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "one"}, {"name": "two"}], "serviceAccount": "legacy"}}}});
        assert_eq!(
            pull_credentials(WorkloadKind::Deployment, &d),
            PullCredentials {
                secrets: vec!["one".into(), "two".into()],
                service_account: "legacy".into()
            }
        );
        assert_eq!(
            pull_credentials(
                WorkloadKind::Pod,
                &json!({"spec": {"serviceAccountName": ""}})
            )
            .service_account,
            "default"
        );
    }

    #[test]
    fn manifests_flatten_lists_and_skip_other_kinds() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
            {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": "ops"}}
        ]});
        let found = manifests(&list);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].kind, found[0].namespace, found[0].name),
            (WorkloadKind::CronJob, "ops", "nightly")
        );
        assert_eq!(found[0].pointer.as_str(), "/items/1");
    }
}
