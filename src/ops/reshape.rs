//! Reshape (the attention's head split and merge).

use super::{numel, Shape};

/// Reinterprets a contiguous tensor with a new shape of the same size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reshape {
    /// The target shape.
    pub shape: Shape,
}

impl Reshape {
    /// The target shape, if the element counts agree.
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        if numel(input) != numel(&self.shape) {
            return Err(format!("cannot reshape {input:?} to {:?}", self.shape));
        }
        Ok(self.shape.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_element_count() {
        let r = Reshape { shape: vec![1, 2, 3, 20] };
        assert_eq!(r.infer_shape(&vec![1, 6, 4, 5]).unwrap(), vec![1, 2, 3, 20]);
        assert!(r.infer_shape(&vec![1, 6, 4, 4]).is_err());
    }
}
