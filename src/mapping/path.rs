//! Referral field paths (`details.dealValue`, `customerProfile.team[0].email`)
//! and the document they build together.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Member(String),
    Element(usize),
}

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldPath {
    steps: Vec<Step>,
}

impl FieldPath {
    /// `name(.name)*`, where a name is `[A-Za-z_][A-Za-z0-9_]*`, optionally
    /// followed by `[index]`.
    pub(super) fn parse(text: &str) -> Result<FieldPath, String> {
        let mut steps = Vec::new();
        for segment in text.split('.') {
            let (name, index) = match segment.split_once('[') {
                Some((name, rest)) => {
                    let index = rest
                        .strip_suffix(']')
                        .and_then(parse_index)
                        .ok_or_else(|| {
                            format!("`{segment}` is not `name[index]` with an index such as 0 or 1")
                        })?;
                    (name, Some(index))
                }
                None => (segment, None),
            };
            if !is_member_name(name) {
                return Err(format!(
                    "`{text}` is not a field path: `{name}` is not a member name (letters, digits and `_`, dot-separated, with `[index]` for a list element)"
                ));
            }
            steps.push(Step::Member(name.to_owned()));
            if let Some(index) = index {
                steps.push(Step::Element(index));
            }
        }
        Ok(FieldPath { steps })
    }

    /// The first member name.
    pub(super) fn root(&self) -> &str {
        match self.steps.first() {
            Some(Step::Member(name)) => name,
            // A parsed path always starts with a member.
            _ => "",
        }
    }

    /// The members up to the first list: what the field makes the mapping
    /// own. A list is owned whole, because its elements are compacted.
    pub(super) fn managed_members(&self) -> Vec<&str> {
        self.steps
            .iter()
            .map_while(|step| match step {
                Step::Member(name) => Some(name.as_str()),
                Step::Element(_) => None,
            })
            .collect()
    }
}

impl FieldPath {
    /// For a path into a list element (`customerProfile.team[0].email`):
    /// the members up to the list and the element member it fills.
    pub(super) fn element_member(&self) -> Option<(Vec<&str>, &str)> {
        let index = self
            .steps
            .iter()
            .position(|step| matches!(step, Step::Element(_)))?;
        match self.steps.get(index + 1) {
            Some(Step::Member(member)) => Some((self.managed_members(), member.as_str())),
            _ => None,
        }
    }
}

fn is_member_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `0`, `1`, …: no sign, no leading zeros, so one element has one name.
fn parse_index(text: &str) -> Option<usize> {
    let canonical = text == "0" || (!text.starts_with('0') && !text.is_empty());
    if canonical && text.chars().all(|c| c.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// The shape of the desired document: which field fills which place.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shape {
    /// The value of field number `n`.
    Field(usize),
    Object(BTreeMap<String, Shape>),
    /// Elements by index; rendered in index order, empty ones dropped.
    List(BTreeMap<usize, Shape>),
}

/// Two field paths that cannot both be in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Conflict {
    /// The field already in the shape.
    pub other: usize,
    pub reason: &'static str,
}

impl Shape {
    pub(super) fn new() -> Shape {
        Shape::Object(BTreeMap::new())
    }

    /// Place field number `field` at `path`.
    pub(super) fn insert(&mut self, path: &FieldPath, field: usize) -> Result<(), Conflict> {
        let mut node = self;
        for (position, step) in path.steps.iter().enumerate() {
            let next_is_element = matches!(path.steps.get(position + 1), Some(Step::Element(_)));
            let is_last = position + 1 == path.steps.len();
            let fresh = || {
                if is_last {
                    Shape::Field(field)
                } else if next_is_element {
                    Shape::List(BTreeMap::new())
                } else {
                    Shape::Object(BTreeMap::new())
                }
            };
            let child = match (node, step) {
                (Shape::Field(other), _) => {
                    return Err(Conflict {
                        other: *other,
                        reason: "maps a single value where this field needs an object or a list",
                    });
                }
                (Shape::Object(members), Step::Member(name)) => {
                    members.entry(name.clone()).or_insert_with(fresh)
                }
                (Shape::List(elements), Step::Element(index)) => {
                    elements.entry(*index).or_insert_with(fresh)
                }
                (shape, _) => {
                    return Err(Conflict {
                        other: shape.first_field(),
                        reason: "uses the same member as an object where this field uses it as a list, or the other way round",
                    });
                }
            };
            if is_last {
                return match child {
                    Shape::Field(placed) if *placed == field => Ok(()),
                    Shape::Field(other) => Err(Conflict {
                        other: *other,
                        reason: "maps the same place",
                    }),
                    shape => Err(Conflict {
                        other: shape.first_field(),
                        reason: "maps members below the value this field maps",
                    }),
                };
            }
            let kind_matches = matches!(
                (&*child, next_is_element),
                (Shape::List(_), true) | (Shape::Object(_), false) | (Shape::Field(_), _)
            );
            if !kind_matches {
                return Err(Conflict {
                    other: child.first_field(),
                    reason: "uses the same member as an object where this field uses it as a list, or the other way round",
                });
            }
            node = child;
        }
        Ok(())
    }

    /// Some field placed at or below this node (used to name the other side
    /// of a conflict).
    fn first_field(&self) -> usize {
        match self {
            Shape::Field(field) => *field,
            Shape::Object(members) => members.values().next().map_or(0, Shape::first_field),
            Shape::List(elements) => elements.values().next().map_or(0, Shape::first_field),
        }
    }

    /// The document the field values make: members without a value are
    /// left out, objects and lists left empty are left out, and list
    /// elements are compacted.
    pub(super) fn render(&self, values: &[Option<Value>]) -> Option<Value> {
        match self {
            Shape::Field(field) => values.get(*field).cloned().flatten(),
            Shape::Object(members) => {
                let object: Map<String, Value> = members
                    .iter()
                    .filter_map(|(name, shape)| Some((name.clone(), shape.render(values)?)))
                    .collect();
                (!object.is_empty()).then_some(Value::Object(object))
            }
            Shape::List(elements) => {
                let list: Vec<Value> = elements
                    .values()
                    .filter_map(|shape| shape.render(values))
                    .collect();
                (!list.is_empty()).then_some(Value::Array(list))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).unwrap()
    }

    #[test]
    fn paths_parse_into_steps() {
        use Step::{Element, Member};
        let cases = [
            ("name", vec![Member("name".into())]),
            (
                "details.dealValue",
                vec![Member("details".into()), Member("dealValue".into())],
            ),
            (
                "customerProfile.team[0].email",
                vec![
                    Member("customerProfile".into()),
                    Member("team".into()),
                    Element(0),
                    Member("email".into()),
                ],
            ),
            ("ids[12]", vec![Member("ids".into()), Element(12)]),
        ];
        for (text, steps) in cases {
            assert_eq!(path(text).steps, steps, "path {text:?}");
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        let cases = [
            ("", "`` is not a field path: `` is not a member name"),
            (
                "details.",
                "`details.` is not a field path: `` is not a member name",
            ),
            ("details..notes", "`details..notes` is not a field path"),
            ("team[]", "`team[]` is not `name[index]`"),
            ("team[01]", "`team[01]` is not `name[index]`"),
            ("team[-1]", "`team[-1]` is not `name[index]`"),
            ("team[0", "`team[0` is not `name[index]`"),
            ("team[0][1]", "`team[0][1]` is not `name[index]`"),
            ("/details/notes", "`/details/notes` is not a field path"),
            ("1st", "`1st` is not a field path"),
            ("deal value", "`deal value` is not a field path"),
        ];
        for (text, message) in cases {
            let error = FieldPath::parse(text).unwrap_err();
            assert!(error.starts_with(message), "{text:?}: {error}");
        }
    }

    #[test]
    fn managed_members_stop_at_the_first_list() {
        assert_eq!(
            path("details.dealValue").managed_members(),
            ["details", "dealValue"]
        );
        assert_eq!(
            path("customerProfile.team[0].email").managed_members(),
            ["customerProfile", "team"]
        );
        assert_eq!(path("ids[0]").managed_members(), ["ids"]);
    }

    fn shape_of(paths: &[&str]) -> Result<Shape, (usize, Conflict)> {
        let mut shape = Shape::new();
        for (field, text) in paths.iter().enumerate() {
            shape.insert(&path(text), field).map_err(|c| (field, c))?;
        }
        Ok(shape)
    }

    #[test]
    fn conflicting_paths_name_each_other() {
        let cases: &[(&[&str], usize, usize)] = &[
            (
                &["customerProfile.address", "customerProfile.address.city"],
                1,
                0,
            ),
            (
                &["customerProfile.address.city", "customerProfile.address"],
                1,
                0,
            ),
            (&["team[0].email", "team.email"], 1, 0),
            (&["team.email", "team[0].email"], 1, 0),
            (&["team[0]", "team[0].email"], 1, 0),
            (&["team[0].email", "team[0]"], 1, 0),
            (&["details.notes", "details.notes[0]"], 1, 0),
        ];
        for (paths, field, other) in cases {
            let (failed, conflict) = shape_of(paths).unwrap_err();
            assert_eq!(
                (failed, conflict.other),
                (*field, *other),
                "paths {paths:?}"
            );
        }
    }

    #[test]
    fn rendering_leaves_out_empties_and_compacts_lists() {
        let shape = shape_of(&[
            "name",
            "details.notes",
            "customerProfile.team[0].email",
            "customerProfile.team[0].firstName",
            "customerProfile.team[1].email",
            "customerProfile.team[2].email",
            "customerProfile.address.city",
        ])
        .unwrap();
        let values = [
            Some(json!("Deal")),
            None,
            None,
            None,
            None,
            Some(json!("c@x.example")),
            None,
        ];
        assert_eq!(
            shape.render(&values),
            Some(json!({
                "name": "Deal",
                "customerProfile": {"team": [{"email": "c@x.example"}]}
            }))
        );
        assert_eq!(
            shape.render(&[None, None, None, None, None, None, None]),
            None
        );
    }
}
