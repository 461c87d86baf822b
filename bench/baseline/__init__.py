"""The plain design the product is measured against (not part of the product).

aiohttp + asyncpg on the seed's schema: one INSERT ... RETURNING per POST /sales/, reports as
GROUP BY joins over the raw sales, two processes sharing the port (SO_REUSEPORT).
"""
