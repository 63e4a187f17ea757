//! Image input and class-map output: reading PNG/JPEG photos into the network's normalised CHW
//! layout (as mmseg's test pipeline prepares them) and writing predicted class maps as coloured PNGs.

use std::path::Path;

use image::{ImageEncoder, RgbImage};

use crate::error::{write_atomic, Error, Result};
use crate::spec::MAX_SIDE;

/// mmseg's ImageNet normalisation mean (RGB, 0–255 scale).
pub const MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// mmseg's ImageNet normalisation standard deviation (RGB, 0–255 scale).
pub const STD: [f32; 3] = [58.395, 57.12, 57.375];

/// A photo prepared for the network: its 8-bit RGB pixels at the network's input size and the same pixels
/// normalised as mmseg does (mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]), as CHW planes.
pub struct NetworkImage {
    /// The (resized) 8-bit pixels, what an overlay is drawn on.
    pub rgb: RgbImage,
    /// Normalised CHW f32 planes, the network's input.
    pub data: Vec<f32>,
}

/// Decodes a PNG or JPEG file (format detected from the content) as 8-bit RGB; greyscale and alpha images
/// are converted. Errors name the file.
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image_bytes(&bytes, &path.display().to_string())
}

/// Decodes PNG or JPEG bytes as 8-bit RGB. `name` is what errors call the data.
///
/// The decoded image may take at most [`MAX_PIXELS`] pixels and [`DECODE_RATIO`] bytes per input byte (beyond
/// a 16 MiB floor): a header that claims a larger image than its data can hold fails before anything is
/// allocated for it.
pub fn decode_image_bytes(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let unreadable = |e: image::ImageError| Error::input(format!("{name}: cannot read image: {e}"));
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::input(format!("{name}: cannot read image: {e}")))
    };
    // The header's size is checked before anything is decoded.
    let (width, height) = reader()?.into_dimensions().map_err(unreadable)?;
    if width as usize * height as usize > MAX_PIXELS {
        return Err(Error::input(format!(
            "{name}: image is {height}×{width}; at most {MAX_PIXELS} pixels are supported"
        )));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE as u32);
    limits.max_image_height = Some(MAX_SIDE as u32);
    let justified = (bytes.len() as u64).saturating_mul(DECODE_RATIO).max(16 << 20);
    limits.max_alloc = Some(justified.min(4 * MAX_PIXELS as u64));
    reader.limits(limits);
    let img = reader.decode().map_err(unreadable)?.to_rgb8();
    if img.width() == 0 || img.height() == 0 || img.len() / 3 > MAX_PIXELS {
        return Err(Error::input(format!("{name}: image is {}×{}", img.height(), img.width())));
    }
    Ok(img)
}

/// How many decoded bytes one byte of a PNG or JPEG file may justify: above deflate's ~1032:1 ceiling and
/// the ratios flat JPEGs reach.
pub const DECODE_RATIO: u64 = 2048;

/// Resizes `img` to (h, w) if it is not that size already (see [`read_image`]) and normalises it.
pub fn prepare(img: RgbImage, resize_to: Option<(usize, usize)>, name: &str) -> Result<NetworkImage> {
    let (src_w, src_h) = (img.width() as usize, img.height() as usize);
    let (h, w) = resize_to.unwrap_or((src_h, src_w));
    let pixels = h.checked_mul(w).filter(|&n| n > 0 && n <= MAX_PIXELS).ok_or_else(|| {
        Error::input(format!("{name}: cannot resize to {h}×{w} (at most {MAX_PIXELS} pixels, none empty)"))
    })?;
    let rgb = if (h, w) == (src_h, src_w) {
        img
    } else {
        let resized = resize_bilinear(img.as_raw(), (src_h, src_w), (h, w));
        RgbImage::from_raw(w as u32, h as u32, resized).expect("the resize writes h·w pixels")
    };
    let mut data = vec![0f32; 3 * pixels];
    for (p, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * pixels + p] = (f32::from(px[c]) - MEAN[c]) / STD[c];
        }
    }
    Ok(NetworkImage { rgb, data })
}

/// Reads a PNG or JPEG as RGB, optionally resizes it to (h, w) (bilinear), returns normalised CHW f32 data
/// and (h, w).
///
/// The format is detected from the content. Resizing follows mmcv's `imresize` (OpenCV's
/// `INTER_LINEAR`: half-pixel centres, no antialiasing) and, like mmseg's pipeline, keeps the resized
/// image 8-bit (rounded) before normalising.
pub fn read_image(path: &Path, resize_to: Option<(usize, usize)>) -> Result<(Vec<f32>, usize, usize)> {
    let prepared = prepare(decode_image(path)?, resize_to, &path.display().to_string())?;
    let (w, h) = prepared.rgb.dimensions();
    Ok((prepared.data, h as usize, w as usize))
}

/// Largest image (in pixels) `read_image` produces: 2^28, far beyond any segmentation input.
const MAX_PIXELS: usize = 1 << 28;

/// Source index pairs and weights for one axis of an OpenCV-style `INTER_LINEAR` resize.
fn linear_taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let i = f.floor();
            if i < 0.0 {
                (0, 0, 0.0)
            } else if i as usize >= src - 1 {
                (src - 1, src - 1, 0.0)
            } else {
                (i as usize, i as usize + 1, (f - i) as f32)
            }
        })
        .collect()
}

/// Bilinear resize of packed RGB8 data, rounded back to 8 bits.
fn resize_bilinear(rgb: &[u8], (src_h, src_w): (usize, usize), (h, w): (usize, usize)) -> Vec<u8> {
    let (ys, xs) = (linear_taps(src_h, h), linear_taps(src_w, w));
    let mut out = Vec::with_capacity(3 * h * w);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for c in 0..3 {
                let at = |y: usize, x: usize| f32::from(rgb[(y * src_w + x) * 3 + c]);
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out.push((top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// The colour palette for a class count: ADE20K's official 150-colour palette for 150 classes, Cityscapes' 19-colour palette for 19, otherwise a deterministic distinct palette.
///
/// The ADE20K and Cityscapes palettes are mmsegmentation's (`ADE20KDataset`, `CityscapesDataset`).
/// Other counts get the PASCAL VOC colour map (the bits of the class index spread over the
/// channels' high bits), whose colours are distinct for up to 2^24 classes; class 0 is black.
pub fn palette(num_classes: usize) -> Vec<[u8; 3]> {
    match num_classes {
        150 => ADE20K_PALETTE.to_vec(),
        19 => CITYSCAPES_PALETTE.to_vec(),
        n => (0..n)
            .map(|i| {
                let mut rgb = [0u8; 3];
                for bit in 0..8 {
                    for (c, v) in rgb.iter_mut().enumerate() {
                        *v |= (((i >> (3 * bit + c)) & 1) as u8) << (7 - bit);
                    }
                }
                rgb
            })
            .collect(),
    }
}

/// Colours a class map (row-major h×w class indices) with `palette`.
///
/// Fails (naming `name`) if `classes` does not hold h·w entries or a class has no palette colour.
pub fn colourise(classes: &[u32], h: usize, w: usize, palette: &[[u8; 3]], name: &str) -> Result<RgbImage> {
    if h.checked_mul(w) != Some(classes.len()) || h == 0 || w == 0 {
        return Err(Error::input(format!("{name}: {} class indices for a {h}×{w} map", classes.len())));
    }
    let (Ok(w32), Ok(h32)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(Error::input(format!("{name}: {h}×{w} is too large for an image")));
    };
    let mut rgb = Vec::with_capacity(3 * classes.len());
    for (i, &c) in classes.iter().enumerate() {
        let colour = palette.get(c as usize).ok_or_else(|| {
            Error::input(format!(
                "{name}: class {c} at row {}, column {} has no colour (palette of {})",
                i / w,
                i % w,
                palette.len()
            ))
        })?;
        rgb.extend_from_slice(colour);
    }
    Ok(RgbImage::from_raw(w32, h32, rgb).expect("three bytes per pixel"))
}

/// Writes an RGB image as a PNG, atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::input(format!("{}: cannot encode PNG: {e}", path.display())))?;
    write_atomic(path, &png)
}

/// Blends the colour mask of `classes` over `photo` as mmseg's demo shows a result:
/// `photo · (1 − opacity) + mask · opacity`, truncated to 8 bits. `classes` holds one class per photo pixel.
pub fn overlay(photo: &RgbImage, classes: &[u32], palette: &[[u8; 3]], opacity: f32, name: &str) -> Result<RgbImage> {
    let (w, h) = photo.dimensions();
    let mut blended = colourise(classes, h as usize, w as usize, palette, name)?;
    for (out, &px) in blended.as_mut().iter_mut().zip(photo.as_raw()) {
        *out = (f32::from(px) * (1.0 - opacity) + f32::from(*out) * opacity) as u8;
    }
    Ok(blended)
}

/// The classes present in a class map with their share of its pixels, most frequent first (ties by class).
pub fn classes_present(classes: &[u32]) -> Vec<(u32, f64)> {
    let mut counts = std::collections::BTreeMap::new();
    for &c in classes {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let mut present: Vec<(u32, f64)> =
        counts.into_iter().map(|(c, n)| (c, n as f64 / classes.len().max(1) as f64)).collect();
    present.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    present
}

/// Scale of the legend's 3×5 pixel glyphs.
const GLYPH_SCALE: u32 = 2;
/// Height of one legend row in pixels.
const LEGEND_ROW: u32 = 16;
/// Width of the legend panel in pixels: a swatch, the class index and its share (`150  12.5%`).
const LEGEND_WIDTH: u32 = 112;

/// `img` with a legend panel on its right: one row per class present in `classes` (a class map of `img`'s
/// size), most frequent first, each a colour swatch, the class index and its share of the pixels.
pub fn with_legend(img: &RgbImage, classes: &[u32], palette: &[[u8; 3]]) -> RgbImage {
    let present = classes_present(classes);
    let rows_height = 4 + LEGEND_ROW * present.len() as u32;
    let (w, h) = img.dimensions();
    let mut out = RgbImage::from_pixel(w + LEGEND_WIDTH, h.max(rows_height), image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, img, 0, 0);
    for (row, &(class, share)) in present.iter().enumerate() {
        let top = 4 + LEGEND_ROW * row as u32;
        let colour = palette.get(class as usize).copied().unwrap_or([0, 0, 0]);
        for y in top..top + 12 {
            for x in w + 4..w + 16 {
                out.put_pixel(x, y, image::Rgb(colour));
            }
        }
        let label = format!("{class:>3} {:>5.1}%", 100.0 * share);
        draw_text(&mut out, &label, (w + 20, top + 1));
    }
    out
}

/// Draws digits, `.`, `%` and spaces in black with a 3×5 pixel font scaled by [`GLYPH_SCALE`].
fn draw_text(img: &mut RgbImage, text: &str, (left, top): (u32, u32)) {
    for (i, ch) in text.chars().enumerate() {
        let rows = glyph(ch);
        let x0 = left + i as u32 * 4 * GLYPH_SCALE;
        for (r, bits) in rows.iter().enumerate() {
            for c in 0..3 {
                if bits >> (2 - c) & 1 == 1 {
                    for dy in 0..GLYPH_SCALE {
                        for dx in 0..GLYPH_SCALE {
                            let (x, y) = (x0 + c * GLYPH_SCALE + dx, top + r as u32 * GLYPH_SCALE + dy);
                            if x < img.width() && y < img.height() {
                                img.put_pixel(x, y, image::Rgb([0, 0, 0]));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The five 3-bit rows of the digits 0–9 in the legend's font.
const DIGIT_GLYPHS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b001, 0b001, 0b001],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

/// The five 3-bit rows of a legend glyph (blank for characters the font lacks).
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '.' => [0, 0, 0, 0, 0b010],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        _ => ch.to_digit(10).map_or([0; 5], |d| DIGIT_GLYPHS[d as usize]),
    }
}

/// mmsegmentation's `ADE20KDataset` palette, one colour per class.
const ADE20K_PALETTE: [[u8; 3]; 150] = [
    [120, 120, 120],
    [180, 120, 120],
    [6, 230, 230],
    [80, 50, 50],
    [4, 200, 3],
    [120, 120, 80],
    [140, 140, 140],
    [204, 5, 255],
    [230, 230, 230],
    [4, 250, 7],
    [224, 5, 255],
    [235, 255, 7],
    [150, 5, 61],
    [120, 120, 70],
    [8, 255, 51],
    [255, 6, 82],
    [143, 255, 140],
    [204, 255, 4],
    [255, 51, 7],
    [204, 70, 3],
    [0, 102, 200],
    [61, 230, 250],
    [255, 6, 51],
    [11, 102, 255],
    [255, 7, 71],
    [255, 9, 224],
    [9, 7, 230],
    [220, 220, 220],
    [255, 9, 92],
    [112, 9, 255],
    [8, 255, 214],
    [7, 255, 224],
    [255, 184, 6],
    [10, 255, 71],
    [255, 41, 10],
    [7, 255, 255],
    [224, 255, 8],
    [102, 8, 255],
    [255, 61, 6],
    [255, 194, 7],
    [255, 122, 8],
    [0, 255, 20],
    [255, 8, 41],
    [255, 5, 153],
    [6, 51, 255],
    [235, 12, 255],
    [160, 150, 20],
    [0, 163, 255],
    [140, 140, 140],
    [250, 10, 15],
    [20, 255, 0],
    [31, 255, 0],
    [255, 31, 0],
    [255, 224, 0],
    [153, 255, 0],
    [0, 0, 255],
    [255, 71, 0],
    [0, 235, 255],
    [0, 173, 255],
    [31, 0, 255],
    [11, 200, 200],
    [255, 82, 0],
    [0, 255, 245],
    [0, 61, 255],
    [0, 255, 112],
    [0, 255, 133],
    [255, 0, 0],
    [255, 163, 0],
    [255, 102, 0],
    [194, 255, 0],
    [0, 143, 255],
    [51, 255, 0],
    [0, 82, 255],
    [0, 255, 41],
    [0, 255, 173],
    [10, 0, 255],
    [173, 255, 0],
    [0, 255, 153],
    [255, 92, 0],
    [255, 0, 255],
    [255, 0, 245],
    [255, 0, 102],
    [255, 173, 0],
    [255, 0, 20],
    [255, 184, 184],
    [0, 31, 255],
    [0, 255, 61],
    [0, 71, 255],
    [255, 0, 204],
    [0, 255, 194],
    [0, 255, 82],
    [0, 10, 255],
    [0, 112, 255],
    [51, 0, 255],
    [0, 194, 255],
    [0, 122, 255],
    [0, 255, 163],
    [255, 153, 0],
    [0, 255, 10],
    [255, 112, 0],
    [143, 255, 0],
    [82, 0, 255],
    [163, 255, 0],
    [255, 235, 0],
    [8, 184, 170],
    [133, 0, 255],
    [0, 255, 92],
    [184, 0, 255],
    [255, 0, 31],
    [0, 184, 255],
    [0, 214, 255],
    [255, 0, 112],
    [92, 255, 0],
    [0, 224, 255],
    [112, 224, 255],
    [70, 184, 160],
    [163, 0, 255],
    [153, 0, 255],
    [71, 255, 0],
    [255, 0, 163],
    [255, 204, 0],
    [255, 0, 143],
    [0, 255, 235],
    [133, 255, 0],
    [255, 0, 235],
    [245, 0, 255],
    [255, 0, 122],
    [255, 245, 0],
    [10, 190, 212],
    [214, 255, 0],
    [0, 204, 255],
    [20, 0, 255],
    [255, 255, 0],
    [0, 153, 255],
    [0, 41, 255],
    [0, 255, 204],
    [41, 0, 255],
    [41, 255, 0],
    [173, 0, 255],
    [0, 245, 255],
    [71, 0, 255],
    [122, 0, 255],
    [0, 255, 184],
    [0, 92, 255],
    [184, 255, 0],
    [0, 133, 255],
    [255, 214, 0],
    [25, 194, 194],
    [102, 255, 0],
    [92, 0, 255],
];

/// mmsegmentation's `CityscapesDataset` palette, one colour per train id.
const CITYSCAPES_PALETTE: [[u8; 3]; 19] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::weights::tests::TempPath;

    /// A 3×2 RGB test image with known pixels.
    fn sample() -> image::RgbImage {
        image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([(x * 100) as u8, (y * 200) as u8, 7]))
    }

    #[test]
    fn reads_and_normalises_png() {
        let tmp = TempPath::new("sample.png");
        sample().save_with_format(&tmp.0, image::ImageFormat::Png).unwrap();
        let (data, h, w) = read_image(&tmp.0, None).unwrap();
        assert_eq!((h, w), (2, 3));
        assert_eq!(data.len(), 3 * 6);
        // Pixel (x=2, y=1) = [200, 200, 7], at plane offset y*w + x = 5.
        let expect = [(200.0 - 123.675) / 58.395, (200.0 - 116.28) / 57.12, (7.0 - 103.53) / 57.375];
        for c in 0..3 {
            assert!((data[c * 6 + 5] - expect[c]).abs() < 1e-6, "channel {c}: {}", data[c * 6 + 5]);
        }
        // Pixel (0, 0) = [0, 0, 7].
        assert!((data[0] + 123.675 / 58.395).abs() < 1e-6);
    }

    #[test]
    fn detects_format_by_content_and_reads_jpeg() {
        let tmp = TempPath::new("really-a-jpeg.png");
        let flat = image::RgbImage::from_pixel(8, 8, image::Rgb([128, 64, 32]));
        flat.save_with_format(&tmp.0, image::ImageFormat::Jpeg).unwrap();
        let (data, h, w) = read_image(&tmp.0, None).unwrap();
        assert_eq!((h, w), (8, 8));
        // JPEG is lossy: allow a couple of levels.
        assert!((data[0] * STD[0] + MEAN[0] - 128.0).abs() < 3.0);
        assert!((data[64] * STD[1] + MEAN[1] - 64.0).abs() < 3.0);
    }

    #[test]
    fn resize_matches_opencv_linear() {
        // 1-D check of the taps: 4 -> 2 samples at source 0.5 and 2.5 (half-pixel centres).
        assert_eq!(linear_taps(4, 2), vec![(0, 1, 0.5), (2, 3, 0.5)]);
        // 2 -> 4: source -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        assert_eq!(linear_taps(2, 4), vec![(0, 0, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.0)]);
        let tmp = TempPath::new("resize.png");
        sample().save_with_format(&tmp.0, image::ImageFormat::Png).unwrap();
        let (data, h, w) = read_image(&tmp.0, Some((4, 6))).unwrap();
        assert_eq!((h, w, data.len()), (4, 6, 72));
        // Red (= 100·x) at output column 1: source x 0.25 -> 25; column 5 clamps to 200.
        let red = |p: usize| data[p] * STD[0] + MEAN[0];
        assert!((red(1) - 25.0).abs() < 1e-3, "{}", red(1));
        assert!((red(5) - 200.0).abs() < 1e-3, "{}", red(5));
        // Green (= 200·y) at output row 1: source y 0.25 -> 50.
        assert!((data[24 + 6] * STD[1] + MEAN[1] - 50.0).abs() < 1e-3);
    }

    #[test]
    fn unreadable_images_name_the_file() {
        let tmp = TempPath::new("garbage.png");
        std::fs::write(&tmp.0, b"not an image").unwrap();
        let err = read_image(&tmp.0, None).unwrap_err().to_string();
        assert!(err.contains("garbage.png"), "{err}");
        let missing = TempPath::new("missing.jpg");
        let err = read_image(&missing.0, None).unwrap_err().to_string();
        assert!(err.contains("missing.jpg"), "{err}");
        sample().save_with_format(&tmp.0, image::ImageFormat::Png).unwrap();
        let err = read_image(&tmp.0, Some((0, 5))).unwrap_err().to_string();
        assert!(err.contains("garbage.png"), "{err}");
    }

    #[test]
    fn overlay_and_legend() {
        let photo = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 50) as u8, (y * 100) as u8, 201]));
        let classes: Vec<u32> = (0..15).map(|i| u32::from(i % 5 == 0)).collect();
        let pal = [[0, 0, 0], [255, 255, 255]];
        let blended = overlay(&photo, &classes, &pal, 0.5, "o").unwrap();
        // mmseg: photo·0.5 + colour·0.5, truncated. Pixel (0, 0) is class 1 (white), (1, 0) class 0 (black).
        assert_eq!(blended.get_pixel(0, 0).0, [127, 127, 228]);
        assert_eq!(blended.get_pixel(1, 0).0, [25, 0, 100]);
        assert!(overlay(&photo, &classes[1..], &pal, 0.5, "o").is_err());
        // Classes present, most frequent first: 12 of class 0, 3 of class 1.
        assert_eq!(classes_present(&classes), vec![(0, 0.8), (1, 0.2)]);
        let legend = with_legend(&blended, &classes, &pal);
        assert_eq!(legend.dimensions(), (5 + LEGEND_WIDTH, 4 + 2 * LEGEND_ROW));
        assert_eq!(image::imageops::crop_imm(&legend, 0, 0, 5, 3).to_image(), blended);
        // Swatches in order of frequency: black (class 0), then white (class 1).
        assert_eq!(legend.get_pixel(5 + 8, 4 + 6).0, [0, 0, 0]);
        assert_eq!(legend.get_pixel(5 + 8, 4 + LEGEND_ROW + 6).0, [255, 255, 255]);
        // The text of the first row, "  0  80.0%", is drawn: some black pixels right of the swatch.
        let text_black = (5 + 20..5 + LEGEND_WIDTH)
            .flat_map(|x| (4..4 + LEGEND_ROW).map(move |y| (x, y)))
            .filter(|&(x, y)| legend.get_pixel(x, y).0 == [0, 0, 0])
            .count();
        assert!(text_black > 40, "{text_black}");
    }

    #[test]
    fn palettes() {
        let ade = palette(150);
        assert_eq!(ade.len(), 150);
        assert_eq!(&ade[..2], &[[120, 120, 120], [180, 120, 120]]);
        assert_eq!(ade[149], [92, 0, 255]);
        let city = palette(19);
        assert_eq!(city.len(), 19);
        assert_eq!(&city[..2], &[[128, 64, 128], [244, 35, 232]]);
        assert_eq!(city[18], [119, 11, 32]);
        for n in [1, 10, 21, 300] {
            let p = palette(n);
            assert_eq!(p.len(), n);
            let distinct: std::collections::HashSet<_> = p.iter().collect();
            assert_eq!(distinct.len(), n, "palette({n}) repeats a colour");
            assert_eq!(p, palette(n), "palette({n}) is not deterministic");
        }
        // The PASCAL VOC colour map's first entries.
        assert_eq!(&palette(21)[..4], &[[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]);
    }

    #[test]
    fn class_map_png_round_trip() {
        let tmp = TempPath::new("classes.png");
        let pal = palette(19);
        let (h, w) = (3, 5);
        let classes: Vec<u32> = (0..15).map(|i| (i * 7) % 19).collect();
        let write = |classes: &[u32], h, w| -> Result<()> {
            write_png(&tmp.0, &colourise(classes, h, w, &pal, &tmp.0.display().to_string())?)
        };
        write(&classes, h, w).unwrap();
        let img = image::open(&tmp.0).unwrap().to_rgb8();
        assert_eq!((img.height(), img.width()), (3, 5));
        for (i, &c) in classes.iter().enumerate() {
            let px = img.get_pixel((i % w) as u32, (i / w) as u32).0;
            assert_eq!(px, pal[c as usize], "pixel {i}");
        }
        let err = write(&[0, 19], 1, 2).unwrap_err().to_string();
        assert!(err.contains("class 19") && err.contains("classes.png"), "{err}");
        let err = write(&[0, 1, 2], 2, 2).unwrap_err().to_string();
        assert!(err.contains("3 class indices"), "{err}");
    }
}
