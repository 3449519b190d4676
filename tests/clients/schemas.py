"""The pydantic models the client tests hand to each SDK's structured-output and tool helpers."""

from pydantic import BaseModel, Field


class City(BaseModel):
    """A city and its country."""

    name: str = Field(max_length=16)
    country: str = Field(max_length=16)
    capital: bool


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=16)
