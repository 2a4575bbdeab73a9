"""Image sources read region by region, and image files opened lazily."""

import warnings

import numpy as np
import pytest
import tifffile
import zarr
from zarr.storage import MemoryStore, WrapperStore

from samkit.errors import FormatError, ImageError, ParameterError
from samkit.preprocess import percentile_limits, to_rgb_uint8
from samkit.tiles import Box, ImageSource, TileGrid, as_source, open_image, open_pyramid
from samkit.tiles.source import MAX_SAMPLE_PIXELS, SAMPLE_BLOCKS, SAMPLE_SIDE


def _gray16(shape=(300, 410), seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 400.0, shape).astype(np.uint16)


def _float_channels(shape=(3, 260, 330), seed=1):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 1.0, shape).astype(np.float32)
    image[1] *= 50.0
    image[0, :5, :7] = np.nan
    return image


def _rgb8(shape=(200, 240, 3), seed=2):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class RecordingArray:
    """An array-like that keeps the region of every slice taken from it."""

    def __init__(self, data):
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.chunks = getattr(data, "chunks", None)
        self.regions = []

    def __getitem__(self, key):
        region = np.asarray(self._data[key])
        self.regions.append((key, region.shape))
        return region

    @property
    def pixels_read(self):
        return sum(int(np.prod(shape)) for _, shape in self.regions)


class ChunkCountingStore(WrapperStore):
    """A zarr store that records the chunk keys read through it."""

    read = None

    async def get(self, key, prototype, byte_range=None):
        self.read.append(key)
        return await super().get(key, prototype, byte_range)


def _assert_tiles_match_whole(source, whole):
    grid = TileGrid(source.shape, 128, 16)
    for tile in grid:
        np.testing.assert_array_equal(source.rgb(tile.outer), whole[tile.outer.slices])


@pytest.mark.parametrize(
    "image, kwargs",
    [
        (_rgb8(), {}),
        (_gray16(), {}),
        (_float_channels(), {}),
        (np.moveaxis(_float_channels(), 0, -1)[..., :2], {}),
        (_gray16(), {"contrast_limits": (100, 3000)}),
        (_float_channels(), {"contrast_limits": [(-1, 1), (-40, 40), (-2, 2)]}),
    ],
    ids=["uint8-rgb", "uint16-gray", "float-channels-first", "float-two-channels-last", "given-limits", "per-channel"],
)
def test_rgb_of_the_whole_image_and_of_every_tile_equals_to_rgb_uint8(image, kwargs):
    source = as_source(image, **kwargs)
    whole = to_rgb_uint8(image, **kwargs)
    assert source.shape == whole.shape[:2]
    np.testing.assert_array_equal(source.rgb(source.bounds), whole)
    _assert_tiles_match_whole(source, whole)


def test_limits_are_computed_once_for_the_whole_image_and_shared_by_every_tile():
    image = _gray16()
    image[:100, :100] = 60000  # one bright corner: a tile of its own would be scaled very differently
    recording = RecordingArray(image)
    source = as_source(recording)
    limits = source.contrast_limits
    assert limits == [percentile_limits(image)]
    reads = len(recording.regions)
    corner, elsewhere = Box(0, 0, 128, 128), Box(150, 200, 278, 328)
    assert source.rgb(corner)[:100, :100].min() == 255
    np.testing.assert_array_equal(
        source.rgb(elsewhere), to_rgb_uint8(image, contrast_limits=limits[0])[150:278, 200:328]
    )
    assert source.contrast_limits is limits
    assert len(recording.regions) == reads + 2


def test_uint8_needs_no_limits_unless_given():
    image = _rgb8()
    assert as_source(image).contrast_limits is None
    given = as_source(image, contrast_limits=(50, 200))
    assert given.contrast_limits == [(50.0, 200.0)] * 3
    np.testing.assert_array_equal(given.rgb(given.bounds), to_rgb_uint8(image, contrast_limits=(50, 200)))


def test_read_gives_raw_pixels_channels_last():
    image = _float_channels()
    source = as_source(image)
    assert source.shape == (260, 330) and source.dtype == np.float32 and source.n_channels == 3
    box = Box(10, 20, 50, 90)
    np.testing.assert_array_equal(source.read(box), np.moveaxis(image, 0, -1)[10:50, 20:90])
    gray = _gray16()
    np.testing.assert_array_equal(as_source(gray).read(box), gray[10:50, 20:90])


def test_a_constant_channel_is_black_as_in_to_rgb_uint8():
    image = _float_channels()
    image[2] = 7.0
    source = as_source(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert source.contrast_limits[2] == (7.0, 7.0)
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))
    flat = np.full((100, 120), 3, dtype=np.uint16)
    np.testing.assert_array_equal(as_source(flat).rgb(Box(0, 0, 100, 120)), to_rgb_uint8(flat))


def test_a_tile_with_no_finite_pixel_is_black():
    image = _float_channels()
    image[:, :128, :128] = np.nan
    source = as_source(image)
    assert not source.rgb(Box(0, 0, 128, 128)).any()
    np.testing.assert_array_equal(source.rgb(Box(128, 128, 260, 330)), to_rgb_uint8(image)[128:, 128:])


def test_more_than_three_channels_warn_once_and_use_the_first_three():
    image = np.random.default_rng(3).random((120, 140, 4))
    with pytest.warns(UserWarning, match="4 channels; using the first three"):
        source = as_source(image)
    assert source.channels == (0, 1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiles = [source.rgb(tile.outer) for tile in TileGrid(source.shape, 64, 8)]
    assert len(tiles) == 6
    picked = as_source(image, channels=(3, 1))
    np.testing.assert_array_equal(picked.rgb(picked.bounds), to_rgb_uint8(image, channels=(3, 1)))


def test_memmap(tmp_path):
    image = _gray16((256, 300))
    path = tmp_path / "image.dat"
    memmap = np.memmap(path, dtype=np.uint16, mode="w+", shape=image.shape)
    memmap[:] = image
    memmap.flush()
    source = as_source(np.memmap(path, dtype=np.uint16, mode="r", shape=image.shape))
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))
    assert isinstance(source.read(Box(0, 0, 10, 10)), np.ndarray)


def test_zarr_array(tmp_path):
    image = _float_channels()
    array = zarr.create_array(store=tmp_path / "image.zarr", shape=image.shape, chunks=(1, 64, 64), dtype="float32")
    array[:] = image
    source = as_source(zarr.open(tmp_path / "image.zarr", mode="r"))
    assert source.channel_axis == 0
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))
    _assert_tiles_match_whole(source, to_rgb_uint8(image))


def test_dask_array():
    import dask.array as da

    image = _gray16()
    source = as_source(da.from_array(image, chunks=(100, 100)))
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))
    assert type(source.read(Box(0, 0, 5, 5))) is np.ndarray


def test_plane_of_a_stack():
    stack = np.stack([_gray16(seed=s) for s in range(6)])
    with pytest.raises(ImageError, match=r"plane=\(i,\)"):
        as_source(stack)
    source = as_source(stack, plane=(4,))
    assert source.shape == stack.shape[1:]
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(stack[4]))
    channels_in_the_middle = np.stack([_float_channels(seed=s) for s in range(5)], axis=1)  # (C, Z, Y, X)
    source = as_source(channels_in_the_middle, plane=(slice(None), 2), channel_axis=0)
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(channels_in_the_middle[:, 2]))


def test_axes_of_length_one_are_dropped():
    image = _float_channels()
    five_d = image[None, :, None]  # an OME-Zarr's (t, c, z, y, x)
    source = as_source(five_d)
    assert source.shape == image.shape[1:] and source.channel_axis == 1
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))


def test_plain_tiff(tmp_path):
    image = _gray16((300, 520))
    tifffile.imwrite(tmp_path / "plain.tif", image, tile=(128, 128))
    opened = open_image(tmp_path / "plain.tif")
    assert isinstance(opened, zarr.Array) and opened.shape == image.shape
    np.testing.assert_array_equal(opened[10:20, 30:40], image[10:20, 30:40])
    source = as_source(tmp_path / "plain.tif")
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))


def test_rgb_tiff_and_multi_page_tiff(tmp_path):
    rgb = _rgb8()
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    source = as_source(open_image(tmp_path / "rgb.tif"))
    np.testing.assert_array_equal(source.rgb(source.bounds), rgb)
    stack = np.stack([_gray16((64, 80), seed=s) for s in range(7)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    opened = open_image(tmp_path / "stack.tif")
    assert opened.shape == stack.shape
    source = as_source(opened, plane=(5,))
    np.testing.assert_array_equal(source.read(source.bounds), stack[5])


def _write_pyramid_tiff(path, image):
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, subifds=2, tile=(128, 128), metadata={"axes": "YX"})
        tif.write(image[::2, ::2], subfiletype=1, tile=(128, 128))
        tif.write(image[::4, ::4], subfiletype=1, tile=(128, 128))


def test_pyramidal_ome_tiff(tmp_path):
    image = _gray16((512, 640))
    path = tmp_path / "slide.ome.tif"
    _write_pyramid_tiff(path, image)
    levels = open_pyramid(path)
    assert [level.shape for level in levels] == [(512, 640), (256, 320), (128, 160)]
    np.testing.assert_array_equal(np.asarray(levels[2]), image[::4, ::4])
    full = open_image(path)
    assert full.shape == image.shape
    source = as_source(path)
    assert len(source.levels) == 3
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image))


def _write_ome_zarr(path, levels, zarr_format):
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    for i, level in enumerate(levels):
        array = group.create_array(str(i), shape=level.shape, chunks=(1, 1, 64, 64), dtype=level.dtype)
        array[:] = level
    multiscales = [{"version": "0.4", "axes": ["c", "z", "y", "x"], "datasets": [{"path": "0"}, {"path": "1"}]}]
    if zarr_format == 2:
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return group


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr(tmp_path, zarr_format):
    image = _float_channels()[:, None]  # (c, z, y, x)
    _write_ome_zarr(tmp_path / "image.ome.zarr", [image, image[..., ::2, ::2]], zarr_format)
    levels = open_pyramid(tmp_path / "image.ome.zarr")
    assert [level.shape for level in levels] == [image.shape, image[..., ::2, ::2].shape]
    assert open_image(tmp_path / "image.ome.zarr").shape == image.shape
    source = as_source(tmp_path / "image.ome.zarr")
    np.testing.assert_array_equal(source.rgb(source.bounds), to_rgb_uint8(image[:, 0]))


def test_bioformats2raw_layout_opens_its_first_image(tmp_path):
    image = _float_channels()[:, None]
    root = zarr.open_group(tmp_path / "converted.zarr", mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    _write_ome_zarr(tmp_path / "converted.zarr" / "0", [image, image[..., ::2, ::2]], 2)
    assert open_image(tmp_path / "converted.zarr").shape == image.shape


def test_a_zarr_array_inside_a_group_opens_directly(tmp_path):
    image = _float_channels()[:, None]
    _write_ome_zarr(tmp_path / "image.zarr", [image, image[..., ::2, ::2]], 3)
    assert open_image(tmp_path / "image.zarr" / "1").shape == image[..., ::2, ::2].shape


def test_npy_opens_as_a_memory_map(tmp_path):
    image = _gray16()
    np.save(tmp_path / "image.npy", image)
    opened = open_image(tmp_path / "image.npy")
    assert isinstance(opened, np.memmap) and not opened.flags.writeable
    np.testing.assert_array_equal(np.asarray(opened), image)


def test_png_is_read_into_memory_with_a_warning(tmp_path):
    from skimage import io

    image = _rgb8()
    io.imsave(tmp_path / "photo.png", image, check_contrast=False)
    with pytest.warns(UserWarning, match="cannot be read lazily.*reads it into memory"):
        opened = open_image(tmp_path / "photo.png")
    np.testing.assert_array_equal(opened, image)


def _large_sparse_zarr():
    """A 20,000 x 20,000 zarr array of 500 x 500 chunks with a little tissue in the middle, the rest never written."""
    store = ChunkCountingStore(MemoryStore())
    store.read = []
    array = zarr.create_array(store=store, shape=(20_000, 20_000), chunks=(500, 500), dtype="uint16", fill_value=0)
    array[9_000:11_000, 9_000:11_000] = _gray16((2_000, 2_000))
    store.read.clear()
    return array, store.read


def test_a_large_zarr_reads_only_the_tile_in_use_and_a_bounded_sample():
    array, chunk_keys = _large_sparse_zarr()
    all_chunks = 40 * 40
    recording = RecordingArray(array)
    source = as_source(recording)
    tile = TileGrid(source.shape, 896, 64).tile_at(10_000, 10_000)
    tile_pixels = tile.outer.shape[0] * tile.outer.shape[1]
    with pytest.warns(UserWarning, match="constant in channel.*pass contrast_limits"):
        source.rgb(tile.outer)
    chunks_read = {key for key in chunk_keys if key.startswith("c/")}
    tile_chunks = 9  # a 1024-pixel outer region crosses at most 3 x 3 chunks of 500
    assert len(chunks_read) <= SAMPLE_BLOCKS + tile_chunks < all_chunks // 20
    assert recording.pixels_read <= SAMPLE_BLOCKS * SAMPLE_SIDE**2 + tile_pixels
    assert max(int(np.prod(shape)) for _, shape in recording.regions) == tile_pixels


def test_with_given_limits_only_the_tile_in_use_is_read():
    array, chunk_keys = _large_sparse_zarr()
    recording = RecordingArray(array)
    source = as_source(recording, contrast_limits=(0, 4000))
    grid = TileGrid(source.shape, 896, 64)
    tile = grid.tile_at(10_000, 10_000)
    rgb = source.rgb(tile.outer)
    assert rgb.shape == (*tile.outer.shape, 3) and rgb.max() == 255
    assert [key for key, _ in recording.regions] == [tile.outer.slices]
    assert len({key for key in chunk_keys if key.startswith("c/")}) <= 9


def test_a_large_dask_array_is_sampled_one_chunk_per_block():
    import dask.array as da

    chunk = 1_000
    lazy = da.random.default_rng(7).integers(0, 4_000, (20_000, 30_000), chunks=chunk, dtype=np.uint16)
    recording = RecordingArray(lazy)
    lo, hi = as_source(recording).contrast_limits[0]
    assert 0 <= lo < 100 and 3_900 < hi < 4_000
    assert len(recording.regions) == SAMPLE_BLOCKS
    for (rows, cols), _ in recording.regions:
        assert rows.start // chunk == (rows.stop - 1) // chunk and cols.start // chunk == (cols.stop - 1) // chunk
    starts = sorted({rows.start // chunk for (rows, _), _ in recording.regions})
    assert starts[0] < 4 and starts[-1] > 15  # spread from top to bottom


def test_sampled_limits_of_a_large_image_are_close_to_the_whole_images():
    image = _gray16((2_100, 2_100), seed=5)
    assert image.size > MAX_SAMPLE_PIXELS
    recording = RecordingArray(image)
    lo, hi = as_source(recording).contrast_limits[0]
    true_lo, true_hi = percentile_limits(image)
    assert recording.pixels_read <= SAMPLE_BLOCKS * SAMPLE_SIDE**2 < image.size
    assert abs(lo - true_lo) <= 0.05 * true_hi and abs(hi - true_hi) <= 0.05 * true_hi


def test_limits_of_a_pyramid_come_from_a_small_level():
    full = np.zeros((4_096, 4_096), dtype=np.uint16)
    full[::2, ::2] = _gray16((2_048, 2_048), seed=6)
    small = full[::2, ::2]
    level0, level1 = RecordingArray(full), RecordingArray(small)
    source = as_source([level0, level1])
    assert source.shape == full.shape
    assert source.contrast_limits == [percentile_limits(small)]
    assert level0.regions == [] and level1.pixels_read == small.size
    np.testing.assert_array_equal(
        source.rgb(Box(0, 0, 256, 256)), to_rgb_uint8(full[:256, :256], contrast_limits=percentile_limits(small))
    )


def test_an_image_source_passes_through():
    source = ImageSource(_gray16())
    assert as_source(source) is source
    with pytest.raises(ParameterError, match="already an ImageSource.*contrast_limits"):
        as_source(source, contrast_limits=(0, 1))


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros((4, 5, 6, 7)), {}, "more than one image plane"),
        (np.zeros((10, 20, 30)), {}, "Cannot tell which axis"),
        (np.zeros((10, 20), dtype=complex), {}, "dtype complex128 are not supported"),
        (np.zeros((0, 20)), {}, "empty"),
        (np.zeros(20), {}, "at least 2 axes"),
        (np.zeros((3, 20, 30)), {"channels": (0, 5)}, "channels=.* does not fit an image with 3 channels"),
        (np.zeros((20, 30)), {"contrast_limits": (5, 1)}, "low < high"),
        (np.zeros((20, 30, 2)), {"contrast_limits": [(0, 1)] * 3}, "one .low, high. per channel"),
        (np.zeros((6, 20, 30)), {"plane": (9,)}, "axis 0 needs an index from -6 to 5"),
        (np.zeros((3, 20, 30)), {"channel_axis": 3}, "channel_axis=3 does not fit"),
    ],
)
def test_bad_images_and_settings_say_what_to_do(image, kwargs, match):
    with pytest.raises(ImageError, match=match):
        as_source(image, **kwargs)


def test_a_region_outside_the_image_is_refused():
    source = as_source(_gray16((100, 100)))
    for box in (Box(0, 0, 101, 50), Box(-1, 0, 10, 10), Box(5, 5, 5, 10)):
        with pytest.raises(ParameterError, match="outside the image of 100 x 100"):
            source.read(box)


def test_all_nan_sample_asks_for_limits():
    image = np.full((50, 60), np.nan, dtype=np.float32)
    source = as_source(image)
    with pytest.raises(ImageError, match="give contrast_limits"):
        source.contrast_limits  # noqa: B018 (the property computes the limits)
    assert not as_source(image, contrast_limits=(0, 1)).rgb(Box(0, 0, 50, 60)).any()


def test_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(ImageError, match="No image at .*check the path"):
        open_image(tmp_path / "missing.tif")
    (tmp_path / "notes.tif").write_text("not an image")
    with pytest.raises(ImageError, match="Could not read .*notes.tif as a TIFF"):
        open_image(tmp_path / "notes.tif")
    (tmp_path / "notes.npy").write_text("not an array")
    with pytest.raises(ImageError, match="Could not read .*notes.npy as a NumPy .npy array"):
        open_image(tmp_path / "notes.npy")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="Could not read .*notes.txt as an image"):
        open_image(tmp_path / "notes.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ImageError, match="folder but not a zarr"):
        open_image(tmp_path / "folder")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(FormatError, match="not a zarr array or group"):
        open_image(tmp_path / "empty.zarr")


def test_a_zarr_group_without_multiscales_names_its_arrays(tmp_path):
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    group.create_array("raw", shape=(64, 64), dtype="uint8")
    with pytest.raises(FormatError, match=r"no OME-Zarr 'multiscales' metadata.*plain.zarr/raw"):
        open_image(tmp_path / "plain.zarr")
    zarr.open_group(tmp_path / "bare.zarr", mode="w")
    with pytest.raises(FormatError, match="holds no arrays"):
        open_pyramid(tmp_path / "bare.zarr")
    broken = zarr.open_group(tmp_path / "broken.zarr", mode="w")
    broken.attrs["multiscales"] = [{"datasets": [{"path": "missing"}]}]
    with pytest.raises(FormatError, match="names 'missing', which is not an array"):
        open_image(tmp_path / "broken.zarr")
