"""Regenerates the sample images and tables (synthetic pictures, so the repo ships no third-party photos).

Run: python sample_data/generate.py
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
IMAGES = HERE / "images"

# (file name, subject, colour, shape); formats vary on purpose: the pipeline sniffs and converts.
PICTURES = [
    ("bicycle.jpg", "a red bicycle", (200, 30, 40), "circle"),
    ("mug.png", "a blue coffee mug", (30, 60, 200), "rect"),
    ("lamp.webp", "a yellow desk lamp", (230, 200, 40), "triangle"),
    ("sofa.jpg", "a green sofa", (40, 150, 60), "rect"),
    ("headphones.png", "black headphones", (20, 20, 20), "circle"),
    ("tshirt.jpg", "an orange t-shirt", (240, 130, 30), "triangle"),
    ("phone.tiff", "a silver phone", (180, 180, 190), "rect"),
    ("vase.bmp", "a purple vase", (120, 40, 160), "triangle"),
    ("sneaker.gif", "a white sneaker", (245, 245, 245), "circle"),
    ("kettle_rotated.jpg", "a steel kettle photographed sideways", (150, 150, 160), "rect"),
]
PRODUCTS = [
    ("P-1001", "Trail bike 26in, red", "bicycle.jpg"),
    ("P-1002", "Ceramic mug 350 ml", "mug.png"),
    ("P-1003", "LED desk lamp", "lamp.webp"),
    ("P-1004", "Three-seat sofa, green velvet", "sofa.jpg"),
    ("P-1005", "Over-ear headphones", "headphones.png"),
    ("P-1006", "Cotton t-shirt, orange", "tshirt.jpg"),
    ("P-1007", "Smartphone 128 GB", "phone.tiff"),
    ("P-1008", "Glass vase", "vase.bmp"),
]
REVIEWS = [
    "Arrived quickly and works perfectly. Would buy again.",
    "The handle broke after two days. Very disappointed.",
    "It's fine. Does what it says, nothing more.",
    "Absolutely love the colour, and the fabric feels great!",
    "Stopped charging within a week; support never replied.",
    "Good value for the price, though the manual is confusing.",
    "Terrible smell out of the box, had to return it.",
    "Exactly as pictured. Five stars.",
    "Too small for my desk, but the light is nice.",
    "Packaging was damaged and one part was missing.",
    "Comfortable for long calls, battery lasts all day.",
    "Meh.",
]


def picture(colour: tuple[int, int, int], shape: str, seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (640, 480), (235, 232, 225))
    draw = ImageDraw.Draw(img)
    for _ in range(30):  # a little texture so JPEG sizes are realistic
        x, y = rng.randrange(640), rng.randrange(480)
        shade = rng.randrange(200, 250)
        draw.ellipse((x, y, x + 30, y + 30), fill=(shade, shade, shade - 10))
    box = (170, 90, 470, 390)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=(0, 0, 0), width=4)
    elif shape == "rect":
        draw.rectangle(box, fill=colour, outline=(0, 0, 0), width=4)
    else:
        draw.polygon([(320, 80), (480, 390), (160, 390)], fill=colour, outline=(0, 0, 0))
    return img


def main() -> None:
    IMAGES.mkdir(exist_ok=True)
    for seed, (name, _subject, colour, shape) in enumerate(PICTURES):
        img = picture(colour, shape, seed)
        path = IMAGES / name
        if name == "kettle_rotated.jpg":
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
            img.save(path, "JPEG", quality=85, exif=exif)
        elif name.endswith(".gif"):
            img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        elif name.endswith(".tiff"):
            img.save(path, compression="tiff_deflate")
        elif name.endswith(".bmp"):
            img.resize((320, 240)).save(path)
        else:
            img.save(path)
    with open(HERE / "images.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "subject", "image_path"])
        for number, (name, subject, _colour, _shape) in enumerate(PICTURES, start=1):
            writer.writerow([f"img-{number:03d}", subject, f"images/{name}"])
    with open(HERE / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "photo"])
        for sku, title, name in PRODUCTS:
            writer.writerow([sku, title, f"images/{name}"])
    with open(HERE / "reviews.jsonl", "w", encoding="utf-8") as handle:
        for number, text in enumerate(REVIEWS, start=1):
            handle.write(json.dumps({"review_id": number, "stars_shown": None, "text": text}) + "\n")


if __name__ == "__main__":
    main()
