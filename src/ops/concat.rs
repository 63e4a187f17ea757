//! Channel concatenation and channel slices (the pieces of `Tensor.split`).

use super::{nchw, Shape};

/// `torch.cat(inputs, dim=1)` of NCHW maps of equal spatial size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concat;

impl Concat {
    /// Sums the channels; batch and spatial sizes must agree.
    pub fn infer_shape(&self, inputs: &[&Shape]) -> Result<Shape, String> {
        let first = inputs.first().ok_or("concat of nothing")?;
        let (n, _, h, w) = nchw(first)?;
        let mut channels = 0;
        for shape in inputs {
            let (n2, c, h2, w2) = nchw(shape)?;
            if (n2, h2, w2) != (n, h, w) {
                return Err(format!("concat of mismatched maps {first:?} and {shape:?}"));
            }
            channels += c;
        }
        Ok(vec![n, channels, h, w])
    }
}

/// Channels `start..start + len` of an NCHW map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// First channel.
    pub start: usize,
    /// Number of channels.
    pub len: usize,
}

impl Slice {
    /// The slice must lie within the input's channels.
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        let (n, c, h, w) = nchw(input)?;
        if self.len == 0 || self.start + self.len > c {
            return Err(format!("channels {}..{} out of range for {c} channels", self.start, self.start + self.len));
        }
        Ok(vec![n, self.len, h, w])
    }
}

/// Concatenates batch-1 NCHW inputs along channels: their data simply follow one another.
pub fn forward(inputs: &[&[f32]], out: &mut [f32]) {
    let mut offset = 0;
    for x in inputs {
        out[offset..offset + x.len()].copy_from_slice(x);
        offset += x.len();
    }
}

impl Slice {
    /// Copies the channel range of a batch-1 NCHW input.
    pub fn forward(&self, x: &[f32], input: &Shape, out: &mut [f32]) {
        let plane = input[2] * input[3];
        out.copy_from_slice(&x[self.start * plane..(self.start + self.len) * plane]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_slice_shapes() {
        let a = vec![1, 3, 2, 2];
        let b = vec![1, 5, 2, 2];
        assert_eq!(Concat.infer_shape(&[&a, &b]).unwrap(), vec![1, 8, 2, 2]);
        assert!(Concat.infer_shape(&[&a, &vec![1, 5, 2, 3]]).is_err());
        assert_eq!(Slice { start: 3, len: 5 }.infer_shape(&vec![1, 8, 2, 2]).unwrap(), b);
        assert!(Slice { start: 4, len: 5 }.infer_shape(&vec![1, 8, 2, 2]).is_err());
    }
}
