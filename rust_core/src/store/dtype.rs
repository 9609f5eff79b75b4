//! Element types a store array can hold, by their zarr v3 names.

use zarrs::array::{data_type, DataType};

use crate::error::{CoreError, CoreResult};

/// Element type of a store array. bfloat16 travels through numpy as a uint16 view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// IEEE float32.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16 (the upper half of a float32).
    BF16,
    /// int64 (sample ids).
    I64,
    /// int32 (token positions, -1 for pooled rows).
    I32,
    /// uint8 (modality: 0 image, 1 text).
    U8,
    /// bool (concept labels).
    Bool,
}

impl ElemType {
    /// Parses a zarr v3 data type name (`float32`, `float16`, `bfloat16`, ...).
    pub fn parse(name: &str) -> CoreResult<Self> {
        Ok(match name {
            "float32" => Self::F32,
            "float16" => Self::F16,
            "bfloat16" => Self::BF16,
            "int64" => Self::I64,
            "int32" => Self::I32,
            "uint8" => Self::U8,
            "bool" => Self::Bool,
            other => {
                return Err(CoreError::input(format!(
                    "dtype {other:?} is not supported by the store \
                     (float32, float16, bfloat16, int64, int32, uint8, bool)"
                )))
            }
        })
    }

    /// The zarr v3 data type name.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::U8 => "uint8",
            Self::Bool => "bool",
        }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::I64 => 8,
            Self::U8 | Self::Bool => 1,
        }
    }

    /// The zarrs data type.
    pub fn data_type(self) -> DataType {
        match self {
            Self::F32 => data_type::float32(),
            Self::F16 => data_type::float16(),
            Self::BF16 => data_type::bfloat16(),
            Self::I64 => data_type::int64(),
            Self::I32 => data_type::int32(),
            Self::U8 => data_type::uint8(),
            Self::Bool => data_type::bool(),
        }
    }

    /// Whether the type is a float type (non-finite values can be checked).
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in [
            ElemType::F32,
            ElemType::F16,
            ElemType::BF16,
            ElemType::I64,
            ElemType::I32,
            ElemType::U8,
            ElemType::Bool,
        ] {
            assert_eq!(ElemType::parse(t.name()).unwrap(), t);
        }
        assert!(ElemType::parse("float64").is_err());
        assert_eq!(ElemType::BF16.size(), 2);
    }
}
