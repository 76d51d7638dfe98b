//! A string-keyed map kept as one sorted, exactly sized slice.
//!
//! The operator caches every EnvironmentConfig, and each data source carries two small maps
//! (`options`, `secretOptions`). A `BTreeMap` allocates a node for eleven entries even when it
//! holds two or three, so those maps were most of a cached config's memory. [`CompactMap`] reads
//! and writes the same JSON (an object), has the same schema, and holds exactly its entries.

use std::{borrow::Cow, collections::BTreeMap, fmt, marker::PhantomData};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap,
};

/// A map from strings to `V`, sorted by key, one allocation for all entries. Built by collecting
/// (a later entry of the same key wins, as in a `BTreeMap`); read by key or in key order.
#[derive(Clone, PartialEq)]
pub struct CompactMap<V>(Box<[(String, V)]>);

impl<V> Default for CompactMap<V> {
    fn default() -> Self {
        CompactMap(Box::new([]))
    }
}

impl<V> CompactMap<V> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaces. Reallocates: for building small maps.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                let mut entries = std::mem::take(&mut self.0).into_vec();
                entries.insert(i, (key, value));
                self.0 = entries.into_boxed_slice();
                None
            }
        }
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &V)> + Clone {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &String> + Clone {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + Clone {
        self.0.iter().map(|(_, v)| v)
    }
}

impl<V: fmt::Debug> fmt::Debug for CompactMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> FromIterator<(String, V)> for CompactMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let sorted: BTreeMap<String, V> = iter.into_iter().collect();
        CompactMap(sorted.into_iter().collect())
    }
}

impl<V> From<BTreeMap<String, V>> for CompactMap<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        CompactMap(map.into_iter().collect())
    }
}

impl<V, const N: usize> From<[(String, V); N]> for CompactMap<V> {
    fn from(entries: [(String, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<V> std::ops::Index<&str> for CompactMap<V> {
    type Output = V;

    /// Panics when `key` is absent, as `BTreeMap`'s index does.
    fn index(&self, key: &str) -> &V {
        self.get(key).expect("no entry found for key")
    }
}

impl<'a, V> IntoIterator for &'a CompactMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, V)>,
        fn(&'a (String, V)) -> (&'a String, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V> IntoIterator for CompactMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

impl<V: Serialize> Serialize for CompactMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for CompactMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = CompactMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((k, v)) = access.next_entry::<String, V>()? {
                    entries.insert(k, v);
                }
                Ok(entries.into())
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for CompactMap<V> {
    fn inline_schema() -> bool {
        <BTreeMap<String, V>>::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        <BTreeMap<String, V>>::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        <BTreeMap<String, V>>::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        <BTreeMap<String, V>>::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn reads_and_writes_the_json_of_a_map_in_key_order() {
        let map: CompactMap<Value> =
            serde_json::from_value(json!({ "port": 5432, "host": "db", "ssl": false })).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["host", "port", "ssl"]);
        assert_eq!(map["port"], json!(5432));
        assert_eq!(map.get("nope"), None);
        assert!(map.contains_key("ssl"));
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"host":"db","port":5432,"ssl":false}"#
        );
        let as_btree: BTreeMap<String, Value> =
            serde_json::from_value(serde_json::to_value(&map).unwrap()).unwrap();
        assert_eq!(CompactMap::from(as_btree), map);
    }

    #[test]
    fn a_later_entry_of_a_key_wins_as_in_a_btreemap() {
        let map: CompactMap<i32> = [("a".to_string(), 1), ("b".into(), 2), ("a".into(), 3)]
            .into_iter()
            .collect();
        assert_eq!(
            map.iter().collect::<Vec<_>>(),
            [(&"a".to_string(), &3), (&"b".to_string(), &2)]
        );
        let mut map = map;
        assert_eq!(map.insert("0".into(), 0), None);
        assert_eq!(map.insert("b".into(), 4), Some(2));
        assert_eq!(map.keys().collect::<Vec<_>>(), ["0", "a", "b"]);
        let from_json: CompactMap<i32> = serde_json::from_str(r#"{"a":1,"a":3}"#).unwrap();
        assert_eq!(from_json["a"], 3);
    }

    #[test]
    fn its_schema_is_a_btreemaps() {
        let mut generator = SchemaGenerator::default();
        assert_eq!(
            CompactMap::<Value>::json_schema(&mut generator),
            <BTreeMap<String, Value>>::json_schema(&mut SchemaGenerator::default())
        );
    }
}
