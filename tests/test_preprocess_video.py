"""Video and image pre-processing (vllama_jax/preprocess/{video,image,processor}.py).

References:
- tests/data/media/expected_video.npz: the original's `process_video` / `process_image` on the real
  media files (decord + transformers' CLIP/SigLIP processors); a reduced copy of
  /work/shared/media/expected_preprocess.npz (every _shape/_mean/_std/_thumb, the frame indices, frame
  counts and fps, and two whole images).
- transformers' PIL image processors (`CLIPImageProcessorPil`, `SiglipImageProcessorPil`) for the pixel
  operations on in-memory frames of any size.

Tolerances. Frame indices, frame counts and shapes must be equal. PyAV decodes these files to the same
pixels as decord: measured, our float32 output rounded to float16 equals the original's float16
`_full` arrays bit for bit (max |diff| before rounding 8.9e-4 = float16's half step at |x| ~ 2), and
our float64 per-frame statistics differ from the expected ones by at most 1.2e-7 (mean, std) and
1.1e-6 (12 x 12 thumbnails), which is the float32 summation of the expected values. We assert 1e-5 on
mean / std and 1e-4 on thumbnails: far below one 8-bit level (1/255/std = 0.0146 for CLIP, 0.0078 for
SigLIP), so a wrong frame, a shifted crop or a wrong colour conversion fails, while a decoder that
rounds a handful of pixels differently (a few per 28 x 28 thumbnail cell) still passes. Whole arrays are
compared after the float16 rounding the expected file applied: equal. Against transformers on the same
frames the result is exact (max |diff| 0).
"""
import fractions
import os

import numpy as np
import pytest
from PIL import Image

from vllama_jax.preprocess import video as video_ops
from vllama_jax.preprocess.processor import Processor

PROCESSORS = {"clip336": "openai/clip-vit-large-patch14-336", "siglip384": "google/siglip-so400m-patch14-384"}
VIDEOS = {"sample_demo_3_mp4": "sample_demo_3.mp4", "output_v_3V9tzjyr51I_mp4": "output_v_3V9tzjyr51I.mp4"}
MEAN_STD_ATOL = 1e-5
THUMB_ATOL = 1e-4


@pytest.fixture(scope="module")
def expected(media_dir):
    with np.load(media_dir / "expected_video.npz") as f:
        return dict(f)


def _stats(x):
    """Per frame and channel mean and std, and the (T, 3, 12, 12) average-pooled thumbnail, in float64."""
    x = x.astype(np.float64)
    t, c, h, w = x.shape
    return x.mean((2, 3)), x.std((2, 3)), x.reshape(t, c, 12, h // 12, 12, w // 12).mean((3, 5))


def _check(pixels, expected, key):
    assert pixels.dtype == np.float32
    assert pixels.shape == tuple(expected[key + "_shape"]), key
    mean, std, thumb = _stats(pixels)
    np.testing.assert_allclose(mean, expected[key + "_mean"], rtol=0, atol=MEAN_STD_ATOL, err_msg=key)
    np.testing.assert_allclose(std, expected[key + "_std"], rtol=0, atol=MEAN_STD_ATOL, err_msg=key)
    np.testing.assert_allclose(thumb, expected[key + "_thumb"], rtol=0, atol=THUMB_ATOL, err_msg=key)
    if key + "_full" in expected:
        np.testing.assert_array_equal(pixels.astype(np.float16), expected[key + "_full"], err_msg=key)


# ---------------------------------------------------------------------------------------------------
# The original's outputs on real media
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VIDEOS)
def test_frame_count_fps_and_indices(media_dir, expected, name):
    source = video_ops.open_source(str(media_dir / VIDEOS[name]))
    try:
        total, fps = expected[f"{name}__num_frames_fps"]
        assert source.num_frames == int(total)
        assert source.fps == pytest.approx(fps, rel=1e-12)
        for n in (8, 16):
            indices = video_ops.sample_indices(source.num_frames, source.fps, n)
            assert indices == expected[f"{name}__indices_{n}"].tolist()
    finally:
        source.close()


@pytest.mark.parametrize("aspect", ["none", "pad"])
@pytest.mark.parametrize("num_frames", [8, 16])
@pytest.mark.parametrize("proc", PROCESSORS)
@pytest.mark.parametrize("name", VIDEOS)
def test_video_matches_original(media_dir, expected, name, proc, num_frames, aspect):
    p = Processor.from_pretrained(PROCESSORS[proc], num_frames=num_frames,
                                  aspect_ratio=None if aspect == "none" else "pad")
    _check(p.video(media_dir / VIDEOS[name]), expected, f"{name}__{proc}_{num_frames}f_{aspect}")


@pytest.mark.parametrize("name", VIDEOS)
def test_video_start_end_matches_original(media_dir, expected, name):
    p = Processor.from_pretrained(PROCESSORS["clip336"], num_frames=8)
    _check(p.video(media_dir / VIDEOS[name], start=1.0, end=4.5), expected, f"{name}__clip336_8f_none_s1_e4.5")


@pytest.mark.parametrize("aspect", ["none", "pad"])
@pytest.mark.parametrize("proc", PROCESSORS)
def test_image_matches_original(media_dir, expected, proc, aspect):
    p = Processor.from_pretrained(PROCESSORS[proc], aspect_ratio=None if aspect == "none" else "pad")
    _check(p.image(media_dir / "extreme_ironing.jpg"), expected, f"extreme_ironing_jpg__{proc}_{aspect}")


def test_expected_file_keeps_whole_images(expected):
    # The two whole images are what makes the bit-for-bit check above run; keep them in the reduced file.
    assert {"extreme_ironing_jpg__clip336_none_full", "extreme_ironing_jpg__siglip384_pad_full"} <= set(expected)


# ---------------------------------------------------------------------------------------------------
# Pixel operations against transformers' PIL processors, on frames of awkward sizes
# ---------------------------------------------------------------------------------------------------

def _transformers_processor(proc):
    if proc == "clip336":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        return CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    return SiglipImageProcessorPil(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _pil_pad_to_square(img, colour):
    # The original's expand2square, with PIL's own paste.
    w, h = img.size
    if w == h:
        return img
    canvas = Image.new(img.mode, (max(w, h),) * 2, colour)
    canvas.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return canvas


@pytest.mark.parametrize("aspect", [None, "pad"])
@pytest.mark.parametrize("proc", PROCESSORS)
def test_frames_match_transformers_processor(proc, aspect):
    rng = np.random.default_rng(0)
    # landscape, portrait, odd sizes (crop offsets and int() of the long edge), square, smaller than 336
    sizes = [(360, 640), (481, 300), (337, 999), (200, 200), (57, 91)]
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    p = Processor.from_pretrained(PROCESSORS[proc], num_frames=len(frames), aspect_ratio=aspect)
    ours = p.frames_to_pixels(frames)
    images = [Image.fromarray(f) for f in frames]
    if aspect == "pad":
        images = [_pil_pad_to_square(im, p.config.fill_colour) for im in images]
    ref = np.stack(_transformers_processor(proc)(images)["pixel_values"])
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_fill_colours_are_the_originals():
    assert Processor.from_pretrained(PROCESSORS["clip336"]).config.fill_colour == (122, 116, 104)
    assert Processor.from_pretrained(PROCESSORS["siglip384"]).config.fill_colour == (127, 127, 127)


def test_tower_folder_config(fixtures_dir):
    p = Processor.from_pretrained(fixtures_dir / "v_mistral_clip_stc" / "clip-vit-tiny-patch14-56", num_frames=4)
    assert p.image_size == (56, 56)
    # A checkpoint folder leads to the tower its config.json names.
    assert Processor.from_pretrained(fixtures_dir / "v_mistral_clip_stc").config == p.config
    assert p.frames_to_pixels([np.zeros((30, 40, 3), np.uint8)]).shape == (4, 3, 56, 56)


# ---------------------------------------------------------------------------------------------------
# Generated sources: short clips, GIF, folders, seeking
# ---------------------------------------------------------------------------------------------------

def _coloured_frames(n, h=48, w=64):
    """n frames, each a different flat colour with a bright square that moves (easy to tell apart)."""
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), (20 + 9 * i, 200 - 7 * i, 60 + 3 * i), np.uint8)
        f[8:24, 2 + i % 40:18 + i % 40] = 250
        frames.append(f)
    return frames


def _write_mp4(path, frames, fps=10, gop=250, b_frames=0):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fractions.Fraction(fps))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = b_frames
        stream.options = {"crf": "10"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _decode_all(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_short_mp4_repeats_frames(tmp_path):
    # A video shorter than num_frames: the segment midpoints repeat frames (no black padding).
    path = tmp_path / "short.mp4"
    _write_mp4(path, _coloured_frames(3))
    assert video_ops.sample_indices(3, 10.0, 8) == [0, 0, 1, 1, 1, 1, 2, 2]
    p = Processor.from_pretrained(PROCESSORS["clip336"], num_frames=8)
    decoded = _decode_all(path)
    np.testing.assert_array_equal(p.video(path), p.frames_to_pixels([decoded[i] for i in [0, 0, 1, 1, 1, 1, 2, 2]]))


def test_short_gif_padded_with_black(tmp_path):
    # The original's GIF reader keeps each sampled frame once, so a 3-frame GIF gives 3 frames + 5 black.
    path = tmp_path / "short.gif"
    frames = _coloured_frames(3)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    p = Processor.from_pretrained(PROCESSORS["clip336"], num_frames=8)
    pixels = p.video(path)
    assert pixels.shape == (8, 3, 336, 336)
    with Image.open(path) as gif:
        gif_frames = []
        for i in range(3):
            gif.seek(i)
            gif_frames.append(np.asarray(gif.convert("RGB")))
    np.testing.assert_array_equal(pixels[:3], p.frames_to_pixels(gif_frames)[:3])
    black = (0 - np.asarray(p.config.image_mean, np.float32)) / np.asarray(p.config.image_std, np.float32)
    np.testing.assert_allclose(pixels[3:], np.broadcast_to(black[None, :, None, None], pixels[3:].shape),
                               rtol=0, atol=1e-6)


def test_folder_of_frames(tmp_path):
    frames = _coloured_frames(5)
    for i, f in enumerate(frames):  # names sort in frame order, written out of order on purpose
        Image.fromarray(f).save(tmp_path / f"frame_{4 - i:03d}.png")
    frames = frames[::-1]
    p = Processor.from_pretrained(PROCESSORS["siglip384"], num_frames=8)
    indices = video_ops.sample_indices(5, video_ops.FOLDER_FPS, 8)
    assert indices == [0, 1, 1, 2, 2, 3, 3, 4]
    np.testing.assert_array_equal(p.video(tmp_path), p.frames_to_pixels([frames[i] for i in indices]))
    # start / end use the folder's 3 fps: frames [max(int(1 * 3) - 1, 0), int(1.5 * 3) - 1] = [2, 3]
    np.testing.assert_array_equal(p.video(tmp_path, start=1, end=1.5),
                                  p.frames_to_pixels([frames[i] for i in [2, 2, 2, 2, 3, 3, 3, 3]]))


@pytest.mark.parametrize("b_frames", [0, 2])
def test_seeking_reads_the_same_frames_as_decoding_from_the_start(tmp_path, b_frames):
    path = tmp_path / "gop.mp4"
    _write_mp4(path, _coloured_frames(60), gop=7, b_frames=b_frames)
    decoded = _decode_all(path)
    source = video_ops.open_source(str(path))
    try:
        assert source.num_frames == len(decoded) == 60
        assert source.seekable and len(source.key_frames) > 5
        indices = [3, 3, 0, 59, 20, 21, 22, 40, 13, 8]
        by_seeking = source.read(indices, seek=True)
        from_start = source.read(indices, seek=False)
    finally:
        source.close()
    for i, a, b in zip(indices, by_seeking, from_start, strict=True):
        np.testing.assert_array_equal(a, decoded[i])
        np.testing.assert_array_equal(b, decoded[i])


@pytest.mark.parametrize("name", ["sample_demo_3.mp4", "output_v_3V9tzjyr51I.mp4"])
def test_frames_no_other_frame_needs_are_skipped_and_the_rest_are_exact(media_dir, name):
    # Real H.264 files with B-frames: the seeking reader skips the non-reference frames it does not
    # return, and what it returns is bit for bit a full decode's frames.
    decoded = _decode_all(media_dir / name)
    source = video_ops.open_source(str(media_dir / name))
    calls = []
    real = source._decoded

    def counted(wanted):
        for frame in real(wanted):
            calls.append(frame.pts)
            yield frame

    source._decoded = counted
    rng = np.random.default_rng(0)
    try:
        for indices in ([len(decoded) - 1], sorted(rng.choice(len(decoded), 16, replace=False).tolist()),
                        video_ops.sample_indices(source.num_frames, source.fps, 8)):
            calls.clear()
            frames = source.read(indices, seek=True)
            for i, frame in zip(indices, frames, strict=True):
                np.testing.assert_array_equal(frame, decoded[i])
            assert len(calls) < max(indices) + 1  # fewer frames decoded than lie before the last one read
    finally:
        source.close()


@pytest.mark.parametrize("name", ["sample_demo_3.mp4", "output_v_3V9tzjyr51I.mp4"])
def test_single_threaded_decoding_gives_the_same_frames(media_dir, name):
    # The server's media workers decode each video on one FFmpeg thread (set per calling thread); the
    # frames are FFmpeg's multi-threaded ones bit for bit, by seeking and from the start, and the setting
    # stays with the thread that made it.
    import threading

    def read(threads, seek):
        out = {}

        def work():
            video_ops.set_decode_threads(threads)
            source = video_ops.open_source(str(media_dir / name))
            try:
                idx = video_ops.sample_indices(source.num_frames, source.fps, 8)
                out["frames"] = source.read(idx, seek=seek)
                out["threads"] = source.stream.codec_context.thread_count
            finally:
                source.close()

        t = threading.Thread(target=work)
        t.start()
        t.join()
        return out

    for seek in (True, False):
        auto, one = read(None, seek), read(1, seek)
        assert one["threads"] == 1 and auto["threads"] != 1
        for a, b in zip(auto["frames"], one["frames"], strict=True):
            np.testing.assert_array_equal(a, b)
    assert getattr(video_ops._decoding, "threads", None) is None  # this thread's setting is untouched


def test_more_than_max_frames_is_capped():
    p = Processor.from_pretrained(PROCESSORS["siglip384"], num_frames=40)
    assert p.frames_to_pixels(_coloured_frames(2)).shape[0] == video_ops.MAX_FRAMES


# ---------------------------------------------------------------------------------------------------
# Errors name the file
# ---------------------------------------------------------------------------------------------------

def test_errors_name_the_file(tmp_path):
    p = Processor.from_pretrained(PROCESSORS["clip336"])
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(video_ops.VideoError, match="corrupt.mp4"):
        p.video(bad)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        p.video(tmp_path / "missing.mp4")
    bad_jpg = tmp_path / "corrupt.jpg"
    bad_jpg.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        p.image(bad_jpg)
    short = tmp_path / "short.mp4"
    _write_mp4(short, _coloured_frames(3))
    with pytest.raises(video_ops.VideoError, match="short.mp4"):
        p.video(short, start=50, end=60)
    with pytest.raises(FileNotFoundError, match="no-such/tower"):
        Processor.from_pretrained("no-such/tower")
    with pytest.raises(ValueError, match="aspect_ratio"):
        Processor.from_pretrained(PROCESSORS["clip336"], aspect_ratio="stretch")
    # The original pads only for "pad": its training default "square" is the same as None.
    assert Processor.from_pretrained(PROCESSORS["clip336"], aspect_ratio="square").aspect_ratio is None
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.txt").write_text("not a frame")
    with pytest.raises(video_ops.VideoError, match="a.txt"):
        p.video(folder)
    assert os.path.exists(bad)  # nothing deleted or moved


def test_one_frame_per_second_when_num_frames_is_none(media_dir, tmp_path):
    # The original's num_frames=None: step int(fps) frames, starting half a step in.
    assert video_ops.sample_indices(100, 25.0, None) == [12, 37, 62, 87]
    assert video_ops.sample_indices(300, 29.97, None) == list(range(14, 300, 29))  # fps floored to 29
    assert video_ops.sample_indices(10, 25.0, None) == [5]  # shorter than a second: its middle frame
    assert video_ops.sample_indices(40, 3.0, None, start=2.0, end=5.0) == [6, 9, 12]  # frames 5..14
    assert len(video_ops.sample_indices(3000, 30.0, None)) == video_ops.MAX_FRAMES  # 100 s -> 32 frames

    path = tmp_path / "four_seconds.mp4"
    _write_mp4(path, _coloured_frames(40), fps=10)
    p = Processor.from_pretrained(PROCESSORS["clip336"], num_frames=None)
    decoded = _decode_all(path)
    np.testing.assert_array_equal(p.video(path), p.frames_to_pixels([decoded[i] for i in [5, 15, 25, 35]]))
